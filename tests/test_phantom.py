"""Phantom simulator: contrast physics, tumour compartments, grid, determinism, BraTS layout and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nilearn")
pytest.importorskip("scipy")

from mrtranslate.cli import main  # noqa: E402
from mrtranslate.errors import MissingDependencyError, UsageError  # noqa: E402
from mrtranslate.imaging.layout import find_subjects  # noqa: E402
from mrtranslate.training import phantom_anatomy  # noqa: E402
from mrtranslate.phantom.simulator import PhantomSubject, simulate_subject, write_dataset  # noqa: E402
from mrtranslate.phantom.anatomy import (  # noqa: E402
    BRAIN_HI_MM,
    BRAIN_LO_MM,
    default_grid,
    grid_affine,
    load_template,
)
from mrtranslate.phantom.physics import (  # noqa: E402
    NOMINAL_TISSUES,
    Sequence,
    Tissue,
    draw_sequences,
    draw_tissues,
    flair_null_ti_ms,
)

MODALITIES = ("t1", "t1ce", "t2", "flair")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture(scope="module")
def tumour_subjects() -> list[PhantomSubject]:
    """Three 2 mm subjects with tumours; among them both T1 sequence kinds (spin echo, MPRAGE-like)."""
    subjects = [simulate_subject(seed=0, index=i, spacing=2.0, tumor=True) for i in (0, 1, 3)]
    kinds = {s.parameters["sequences"]["t1"]["kind"] for s in subjects}
    assert kinds == {"spin_echo", "inversion_recovery"}
    return subjects


def pure(subject: PhantomSubject, tissue: str) -> np.ndarray:
    """Voxels of one tissue (>= 90% of it) inside the brain, away from any tumour."""
    return (subject.tissues[tissue] >= 0.9) & subject.mask & (subject.seg == 0)


def mean_in(subject: PhantomSubject, modality: str, where: np.ndarray) -> float:
    assert where.sum() >= 20, "too few voxels to compare"
    return float(subject[modality][where].mean())


# ---- physics ---------------------------------------------------------------------------------------------


def test_normal_tissue_contrast_in_images(tumour_subjects: list[PhantomSubject]) -> None:
    for s in tumour_subjects:
        wm, gm, csf = (pure(s, t) for t in ("wm", "gm", "csf"))
        t1 = [mean_in(s, "t1", m) for m in (wm, gm, csf)]
        t2 = [mean_in(s, "t2", m) for m in (wm, gm, csf)]
        flair = [mean_in(s, "flair", m) for m in (wm, gm, csf)]
        assert t1[0] > t1[1] > t1[2], (s.case, t1)  # T1w: WM > GM > CSF
        assert t2[2] > t2[1] > t2[0], (s.case, t2)  # T2w: CSF > GM > WM
        assert flair[2] < min(flair[:2]) and flair[1] > flair[0], (s.case, flair)  # FLAIR: CSF dark, GM > WM
        assert flair[2] < 0.5 * flair[0], (s.case, flair)  # CSF is (nearly) nulled


def test_tumour_contrast_in_images(tumour_subjects: list[PhantomSubject]) -> None:
    for s in tumour_subjects:
        wm = pure(s, "wm")
        oedema, enhancing, necrosis = (s.seg == 2), (s.seg == 4), (s.seg == 1)
        for modality in ("t2", "flair"):
            assert mean_in(s, modality, oedema) > 1.2 * mean_in(s, modality, wm), (s.case, modality)
        # Gadolinium: the rim is brighter after contrast, absolutely and relative to white matter.
        assert mean_in(s, "t1ce", enhancing) > 1.5 * mean_in(s, "t1", enhancing), s.case
        assert mean_in(s, "t1ce", enhancing) > mean_in(s, "t1ce", wm), s.case
        assert mean_in(s, "t1ce", enhancing) > 2 * mean_in(s, "t1ce", necrosis), s.case
        assert mean_in(s, "t2", necrosis) > mean_in(s, "t2", wm), s.case  # fluid-like core


def test_contrast_order_holds_over_the_whole_protocol_ranges() -> None:
    """Pure-tissue signals of 500 random protocols and tissue draws keep the textbook orderings."""
    rng = np.random.default_rng(12345)
    for _ in range(500):
        tissues, sequences = draw_tissues(rng), draw_sequences(rng)
        sig = {name: {t: abs(seq.signal(tissues[t])) for t in tissues} for name, seq in sequences.items()}
        assert sig["t1"]["wm"] > sig["t1"]["gm"] > sig["t1"]["csf"]
        assert sig["t2"]["csf"] > sig["t2"]["gm"] > sig["t2"]["wm"]
        assert sig["flair"]["gm"] > sig["flair"]["wm"] > sig["flair"]["csf"]
        assert sig["t2"]["oedema"] > sig["t2"]["wm"] and sig["flair"]["oedema"] > sig["flair"]["wm"]
        assert sig["t1ce"]["enhancing"] > sig["t1"]["enhancing"]
        assert sig["t1ce"]["enhancing"] > sig["t1ce"]["wm"]


def test_signal_equations() -> None:
    fluid = NOMINAL_TISSUES["csf"]
    # Spin echo with full recovery and no decay gives the proton density.
    assert Sequence("x", "spin_echo", tr_ms=1e9, te_ms=0.0).signal(fluid) == pytest.approx(fluid.pd)
    # The FLAIR inversion time nulls the tissue it is tuned to, and only that one.
    flair = Sequence("flair", "inversion_recovery", tr_ms=9000.0, te_ms=100.0, ti_ms=flair_null_ti_ms(9000.0))
    assert flair.signal(fluid) == pytest.approx(0.0, abs=1e-12)
    assert flair.signal(NOMINAL_TISSUES["wm"]) > 0.1
    assert flair_null_ti_ms(1e9, 1000.0) == pytest.approx(1000.0 * np.log(2))
    # Gadolinium: 1/T1 = 1/T1_0 + r1 C, r1 = 3.7 /(mM s).
    tissue = Tissue(t1_ms=1000.0, t2_ms=100.0, pd=1.0, gd_mM=0.5)
    assert tissue.t1_post_contrast_ms() == pytest.approx(1.0 / (1e-3 + 3.7e-3 * 0.5))
    with pytest.raises(ValueError, match="no inversion time"):
        Sequence("bad", "inversion_recovery", tr_ms=1000.0, te_ms=10.0).signal(tissue)


# ---- images, grid and labels -----------------------------------------------------------------------------


def test_images_share_grid_and_are_skull_stripped(tumour_subjects: list[PhantomSubject]) -> None:
    s = tumour_subjects[0]
    assert s.shape == (80, 96, 80)
    for modality in MODALITIES:
        image = s[modality]
        assert image.shape == s.shape and image.dtype == np.float32
        assert np.array_equal(image > 0, s.mask)  # foreground is exactly the brain, background exactly 0
        assert 500 < np.percentile(image[s.mask], 99.5) < 2000
    assert s.seg.dtype == np.uint8 and set(np.unique(s.seg)) == {0, 1, 2, 4}
    assert not np.any(s.seg[~s.mask])
    total = sum(s.tissues.values())
    assert np.all(total <= 1.0 + 1e-4) and np.all(total[s.mask] > 0.3)


def test_default_grid_and_affine() -> None:
    assert default_grid(2.0) == (80, 96, 80)
    assert default_grid(1.0) == (160, 192, 160)
    assert all(side % 16 == 0 for side in default_grid(1.5))
    with pytest.raises(UsageError):
        default_grid(0.0)
    affine = grid_affine(2.0, (80, 96, 80))
    assert np.array_equal(affine[:3, :3], np.diag([2.0, 2.0, 2.0]))  # RAS, isotropic
    centre = affine @ np.array([79 / 2, 95 / 2, 79 / 2, 1.0])
    brain_centre = (np.asarray(BRAIN_LO_MM) + np.asarray(BRAIN_HI_MM)) / 2
    assert np.allclose(centre[:3], brain_centre, atol=1.0)  # brain-centred, in MNI millimetres
    corner_lo, corner_hi = affine[:3, 3], (affine @ np.array([79, 95, 79, 1.0]))[:3]
    assert np.all(corner_lo < BRAIN_LO_MM) and np.all(corner_hi > BRAIN_HI_MM)  # the template brain fits


def test_template_matches_nilearn_api_and_brain_box() -> None:
    from nilearn import datasets

    maps = load_template(1.0)
    assert np.array_equal(maps.gm, datasets.load_mni152_gm_template().get_fdata(dtype=np.float32))
    assert np.array_equal(maps.brain, datasets.load_mni152_brain_mask().get_fdata(dtype=np.float32))
    ijk = np.argwhere(maps.brain > 0)
    lo = maps.affine[:3, :3] @ ijk.min(0) + maps.affine[:3, 3]
    hi = maps.affine[:3, :3] @ ijk.max(0) + maps.affine[:3, 3]
    assert np.array_equal(lo, BRAIN_LO_MM) and np.array_equal(hi, BRAIN_HI_MM)


def test_custom_grid_and_tumour_switches() -> None:
    s = simulate_subject(seed=5, index=2, spacing=4.0, tumor=False, grid=(40, 52, 44), blur=False)
    assert s.shape == (40, 52, 44) and s.parameters["tumor_geometry"] is None
    assert np.allclose(s.affine @ [19.5, 25.5, 21.5, 1], [*phantom_anatomy.BRAIN_CENTRE_MM, 1], atol=1.0)
    assert not s.seg.any() and set(s.tissues) == {"wm", "gm", "csf"}
    assert s.parameters["acquisition"]["t2"]["blur_sigma_mm"] == [0.0, 0.0, 0.0]
    none = [simulate_subject(seed=1, index=i, spacing=4.0, tumor_fraction=0.0) for i in range(3)]
    every = [simulate_subject(seed=1, index=i, spacing=4.0, tumor_fraction=1.0) for i in range(3)]
    assert not any(s.parameters["tumor"] for s in none) and all(s.parameters["tumor"] for s in every)
    assert all(s.seg.any() for s in every)


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"index": -2}, {"spacing": 0.0}, {"spacing": "2"}, {"tumor_fraction": 1.5}, {"grid": (8, 8)}],
)
def test_invalid_arguments(kwargs: dict) -> None:
    args = {"seed": 0, **kwargs}
    with pytest.raises(UsageError):
        simulate_subject(**args)


# ---- randomness ------------------------------------------------------------------------------------------


def test_same_seed_same_subject_different_seed_different_subject(tumour_subjects: list[PhantomSubject]) -> None:
    again = simulate_subject(seed=0, index=1, spacing=2.0, tumor=True)
    reference = tumour_subjects[1]
    for key in (*MODALITIES, "seg"):
        assert np.array_equal(again[key], reference[key])
    assert again.parameters == reference.parameters
    other = simulate_subject(seed=1, index=1, spacing=2.0, tumor=True)
    # Anatomy: a different deformation moves the brain outline and the tissue maps.
    overlap = 2 * (other.mask & reference.mask).sum() / (other.mask.sum() + reference.mask.sum())
    assert overlap < 0.97
    assert np.abs(other.tissues["wm"] - reference.tissues["wm"]).mean() > 0.05
    assert other.parameters["spatial"] != reference.parameters["spatial"]
    # Contrast: other relaxation times and protocol.
    assert other.parameters["tissues"]["wm"] != reference.parameters["tissues"]["wm"]
    assert other.parameters["sequences"]["t2"] != reference.parameters["sequences"]["t2"]


def test_dataset_is_byte_identical_serial_or_parallel_and_for_any_n(tmp_path: Path) -> None:
    serial = write_dataset(tmp_path / "a", n=2, seed=7, spacing=4.0, progress=False)
    parallel = write_dataset(tmp_path / "b", n=3, seed=7, spacing=4.0, workers=2, progress=False)
    assert [p.name for p in serial] == ["Phantom_7_00000", "Phantom_7_00001"]
    assert [p.name for p in parallel][:2] == [p.name for p in serial]
    for folder_a, folder_b in zip(serial, parallel):
        files = sorted(f.name for f in folder_a.iterdir())
        assert files == sorted(f.name for f in folder_b.iterdir()) and len(files) == 6
        for name in files:
            assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes(), name


# ---- files -----------------------------------------------------------------------------------------------


def test_written_layout_reads_back(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, n=2, seed=3, spacing=2.0, tumor_fraction=1.0, progress=False)
    subjects = find_subjects(tmp_path)
    assert [s.case for s in subjects] == [f.name for f in folders] == ["Phantom_3_00000", "Phantom_3_00001"]
    expected = simulate_subject(seed=3, index=1, spacing=2.0, tumor_fraction=1.0)
    subject = subjects[1]
    assert list(subject.files) == list(MODALITIES) and subject.seg is not None
    for modality, path in [*subject.files.items(), ("seg", subject.seg)]:
        assert path.name == f"Phantom_3_00001_{modality}.nii.gz"
        image = nib.load(path)
        assert image.shape == (80, 96, 80)
        assert np.array_equal(image.affine, expected.affine)
        assert image.header.get_zooms() == (2.0, 2.0, 2.0)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        data = np.asanyarray(image.dataobj)
        assert data.dtype == (np.uint8 if modality == "seg" else np.float32)
        assert np.array_equal(data, expected[modality])
    params = json.loads((folders[1] / "Phantom_3_00001_phantom.json").read_text())
    assert params == json.loads(json.dumps(expected.parameters))
    manifest = json.loads((tmp_path / "phantom.json").read_text())
    assert manifest["n"] == 2 and manifest["cases"] == ["Phantom_3_00000", "Phantom_3_00001"]


def test_example_subject_matches_its_command(tmp_path: Path) -> None:
    readme = (EXAMPLES / "README.md").read_text()
    assert "mrtranslate phantom examples/data --n 1 --seed 0 --spacing 2 --tumor-fraction 1" in readme
    (committed,) = find_subjects(EXAMPLES)
    fresh = simulate_subject(seed=0, index=0, spacing=2.0, tumor_fraction=1.0)
    assert committed.case == fresh.case
    for modality, path in [*committed.files.items(), ("seg", committed.seg)]:
        image = nib.load(path)
        assert np.array_equal(image.affine, fresh.affine)
        # Same library versions give identical voxels; allow float noise of other BLAS/numpy builds.
        assert np.allclose(np.asanyarray(image.dataobj), fresh[modality], rtol=1e-4, atol=1e-2), modality


# ---- CLI -------------------------------------------------------------------------------------------------


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    code = main(["phantom", str(out), "--n", "1", "--seed", "4", "--spacing", "4", "--tumor-fraction", "0"])
    assert code == 0
    assert f"wrote 1 subjects to {out}" in capsys.readouterr().out
    (subject,) = find_subjects(out)
    assert subject.case == "Phantom_4_00000" and not nib.load(subject.seg).get_fdata().any()


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", str(tmp_path), "--n", "0", "--quiet"]) == 2
    assert "n must be an integer >= 1" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path), "--n", "1", "--tumor-fraction", "2", "--quiet"]) == 2
    assert "tumor fraction must be between 0 and 1" in capsys.readouterr().err


def test_missing_nilearn_is_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(phantom_anatomy, "_module_available", lambda name: name != "nilearn")
    with pytest.raises(MissingDependencyError, match=r'pip install "mrtranslate\[train\]"'):
        simulate_subject(seed=0)
    assert main(["phantom", str(tmp_path / "x"), "--n", "1", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "mrtranslate[train]"' in err and "nilearn" in err
