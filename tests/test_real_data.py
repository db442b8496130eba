"""The dataset and imaging layers on the real BraTS / TCGA sample scans in ../shared/data/brats-samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrtranslate.errors import DatasetLayoutError
from mrtranslate.imaging.layout import find_subjects
from mrtranslate.training.data import preprocess_subject
from mrtranslate.imaging.model_space import Preprocessing, to_model_space
from mrtranslate.imaging.resample import resample_to_spacing

from conftest import SHARED, require_reference

SAMPLES = SHARED / "data" / "brats-samples"
PREP_2MM = Preprocessing(spacing_mm=(2.0, 2.0, 2.0), grid=(80, 96, 80))

# The suffix each naming style uses for each canonical modality.
STYLES = {
    "Brats18_": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair"},
    "BraTS-MET-": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f"},
    "TCGA-": {"t1": "_t1_bet", "t1ce": "_t1c_bet", "t2": "_t2_bet", "flair": "_fla_bet"},
}


@pytest.fixture(scope="module")
def samples() -> Path:
    return require_reference(SAMPLES)


def test_all_fifteen_subjects_found_with_the_right_modality_for_every_file(samples):
    subjects = find_subjects(samples, require=["t1", "t1ce", "t2", "flair"])
    assert len(subjects) == 15
    for s in subjects:
        style = next(v for k, v in STYLES.items() if s.case.startswith(k))
        assert {m: p.name for m, p in s.files.items()} == {m: f"{s.case}{suffix}.nii.gz" for m, suffix in style.items()}


def _copy_subject(samples: Path, case: str, dest: Path) -> Path:
    folder = dest / case
    shutil.copytree(samples / case, folder)
    return folder


def test_a_subject_missing_a_contrast_is_refused_naming_subject_and_files(samples, tmp_path):
    folder = _copy_subject(samples, "TCGA-FG-6692", tmp_path)
    (folder / "TCGA-FG-6692_t1c_bet.nii.gz").unlink()
    find_subjects(tmp_path)  # any subset is fine when nothing is required
    with pytest.raises(DatasetLayoutError) as err:
        find_subjects(tmp_path, require=["t1", "t1c", "t2", "flair"])
    msg = str(err.value)
    assert "TCGA-FG-6692" in msg and "t1ce" in msg and "TCGA-FG-6692_fla_bet.nii.gz" in msg and "\n" not in msg


def test_a_subject_with_a_duplicated_contrast_is_refused_naming_both_files(samples, tmp_path):
    folder = _copy_subject(samples, "BraTS-MET-00110-000", tmp_path)
    shutil.copy(folder / "BraTS-MET-00110-000-t2f.nii.gz", folder / "BraTS-MET-00110-000-flair.nii.gz")
    with pytest.raises(DatasetLayoutError) as err:
        find_subjects(tmp_path)
    msg = str(err.value)
    assert "BraTS-MET-00110-000" in msg and "-t2f.nii.gz" in msg and "-flair.nii.gz" in msg


def test_negative_background_of_the_tcga_scan_maps_to_the_background_value(samples):
    path = samples / "TCGA-FG-6692" / "TCGA-FG-6692_t2_bet.nii.gz"
    raw = np.asarray(nib.load(path).dataobj)
    assert raw.min() < 0  # the case this test is about
    x, inverse = to_model_space(path, PREP_2MM)
    assert float(x.min()) == -1.0  # background (<= 0) is the model's -1, not lifted by negative values
    out = np.asarray(inverse(x[0, 0]).dataobj)
    assert out.shape == raw.shape and out.min() == 0.0 and not np.any(out[raw <= 0])


def test_full_range_int16_scans_scale_like_any_other(samples):
    path = samples / "Brats18_TCIA10_637_1" / "Brats18_TCIA10_637_1_t1.nii.gz"
    assert np.asarray(nib.load(path).dataobj).max() == 32767
    x, _ = to_model_space(path, PREP_2MM)
    brain = x[x > -1]
    assert float(np.percentile(brain.numpy(), 50)) == pytest.approx(0.0, abs=0.8)  # mid-range, not squashed to -1


def test_training_preprocessing_resamples_1mm_subjects_to_the_model_spacing(samples, tmp_path):
    subject = next(s for s in find_subjects(samples) if s.case == "TCGA-FG-6692")
    images, available = preprocess_subject(subject, PREP_2MM)
    assert images.shape == (4, 80, 96, 80) and bool(available.all())
    # the same scans written at 2 mm first (by the same resampler) give the same model-space images
    folder = tmp_path / subject.case
    folder.mkdir()
    for path in subject.files.values():
        img = nib.load(path)
        data, affine = resample_to_spacing(np.maximum(np.asarray(img.dataobj, dtype=np.float32), 0), img.affine, (2.0,) * 3)
        nib.save(nib.Nifti1Image(data, affine), folder / path.name)
    again, _ = preprocess_subject(find_subjects(tmp_path)[0], PREP_2MM)
    assert (again - images).abs().max() < 1e-5
    for m in range(4):
        assert float(images[m].min()) == -1.0 and float((images[m] > -1).float().mean()) > 0.25  # brain, background
