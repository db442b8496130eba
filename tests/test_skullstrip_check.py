"""Inputs that are not skull-stripped are refused (real raw clinical scans), skull-stripped brains accepted
(the real BraTS samples, the same raw scans masked, slabs, tight crops); .mgz inputs; coarse slices."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _translate_utils import files_under, grid_model, small_model, write_head  # noqa: F401
from conftest import SHARED, require_reference
from scipy import ndimage

from mrtranslate.cli import main
from mrtranslate.imaging.skullstrip_check import skull_signs

SAMPLES = SHARED / "data" / "brats-samples"
NATIVE = SHARED / "data" / "native-scans" / "TCGA-FG-6692"


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def signs_of(img: nib.spatialimages.SpatialImage, data: np.ndarray | None = None) -> list[str]:
    data = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    return skull_signs(data, float(np.prod(img.header.get_zooms()[:3])))


def native_scans() -> list[Path]:
    scans = sorted(require_reference(NATIVE).glob("*.nii.gz"))
    assert len(scans) == 4
    return scans


def brain_mask_on(native: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The brats-samples brain mask of the same subject, resampled (nearest neighbour) onto a raw scan's grid.

    The BraTS files sit in atlas space: the mask is moved so that its centre of mass meets the raw head's.
    """
    bet = nib.load(str(require_reference(SAMPLES / "TCGA-FG-6692" / "TCGA-FG-6692_t1_bet.nii.gz")))
    mask = (np.asarray(bet.dataobj) > 0).astype(np.float32)
    data = np.asarray(native.dataobj, dtype=np.float32)
    head = data > 0.1 * np.percentile(data[data > 0], 99)

    def centre(img: nib.spatialimages.SpatialImage, m: np.ndarray) -> np.ndarray:
        return img.affine[:3, :3] @ np.array(ndimage.center_of_mass(m)) + img.affine[:3, 3]

    shift = np.eye(4)
    shift[:3, 3] = centre(bet, mask) - centre(native, head)
    a = np.linalg.inv(bet.affine) @ shift @ native.affine
    return ndimage.affine_transform(mask, a[:3, :3], a[:3, 3], output_shape=data.shape, order=0) > 0


def test_every_real_skull_stripped_sample_is_accepted() -> None:
    subjects = sorted(p for p in require_reference(SAMPLES).iterdir() if p.is_dir())
    assert len(subjects) == 15
    checked = 0
    for subject in subjects:
        for path in sorted(subject.glob("*.nii.gz")):
            if "seg" in path.name:
                continue
            assert signs_of(nib.load(str(path))) == [], path.name
            checked += 1
    assert checked == 60


def test_raw_clinical_scans_show_both_signs_and_each_sign_alone_is_found() -> None:
    for path in native_scans():
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        signs = signs_of(img, data)
        assert len(signs) == 2 and "background is not 0" in signs[0] and "more than a brain" in signs[1], path.name
        # the head with its background set to 0 is still too large for a brain
        head = data * (data > 0.1 * np.percentile(data[data > 0], 99))
        assert [s for s in signs_of(img, head) if "more than a brain" in s] == signs_of(img, head) != []
        # the skull-stripped scan is accepted
        assert signs_of(img, data * brain_mask_on(img)) == [], path.name


def test_slabs_and_tight_crops_of_a_brain_are_accepted() -> None:
    img = nib.load(str(require_reference(SAMPLES / "Brats18_2013_11_1" / "Brats18_2013_11_1_flair.nii.gz")))
    data = np.asarray(img.dataobj, dtype=np.float32)
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(data > 0))
    assert signs_of(img, data[box]) == []  # cropped to the brain, no margin
    assert signs_of(img, data[:, :, 70:80]) == []  # ten axial slices through the middle of the brain


def test_cli_refuses_a_raw_scan_in_one_line_and_writes_nothing(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                capsys: pytest.CaptureFixture) -> None:
    for path in native_scans():
        before = path.read_bytes()
        code, out, err = run(capsys, path, "--to", "t2", "--source", "t1", "--model", small_model, "-o", tmp_path / "out")
        assert (code, out) == (1, "")
        assert len(err.strip().splitlines()) == 1 and "does not look skull-stripped" in err
        assert "HD-BET" in err and "SynthStrip" in err and "--allow-skull" in err
        assert not (tmp_path / "out").exists() and path.read_bytes() == before


def test_allow_skull_translates_a_raw_scan_and_says_its_slices_are_interpolated(
        grid_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    path = next(p for p in native_scans() if p.name.startswith("T1_AX"))
    with caplog.at_level(logging.WARNING, logger="mrtranslate"):  # the model works at 2 mm
        code, _, err = run(capsys, path, "--to", "t2", "--source", "t1", "--model", grid_model, "--steps", "1",
                           "-o", tmp_path, "--allow-skull", "-q")
    assert code == 0, err
    out = nib.load(str(tmp_path / (path.name[: -len(".nii.gz")] + "_t2.nii.gz")))
    assert out.shape == nib.load(str(path)).shape
    assert any("5.5 mm along array axis 2" in r.getMessage() and "input's own grid" in r.getMessage()
               for r in caplog.records)


def test_cli_accepts_the_masked_raw_scan(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    path = next(p for p in native_scans() if p.name.endswith("_fla.nii.gz"))
    img = nib.load(str(path))
    masked = tmp_path / "TCGA-FG-6692_brain_flair.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32) * brain_mask_on(img), img.affine, img.header),
             str(masked))
    code, _, err = run(capsys, masked, "--to", "t1", "--model", small_model, "--steps", "1", "-q")
    assert code == 0, err
    assert (tmp_path / "TCGA-FG-6692_brain_flair_t1.nii.gz").is_file()


def test_mgz_input_gives_a_nifti_output_on_its_grid(small_model: Path, tmp_path: Path,  # noqa: F811
                                                    capsys: pytest.CaptureFixture) -> None:
    nifti = nib.load(str(write_head(tmp_path / "src.nii.gz")))
    nib.save(nib.MGHImage(np.asarray(nifti.dataobj, dtype=np.float32), nifti.affine), str(tmp_path / "sub_T1w.mgz"))
    code, _, err = run(capsys, tmp_path / "sub_T1w.mgz", "--to", "t2", "--model", small_model, "--steps", "1", "-q")
    assert code == 0, err
    out = nib.load(str(tmp_path / "sub_T1w_t2.nii.gz"))
    assert out.shape == nifti.shape and np.allclose(out.affine, nifti.affine)
    assert {"sub_T1w_t2.nii.gz", "sub_T1w_t2.json"} <= files_under(tmp_path)
