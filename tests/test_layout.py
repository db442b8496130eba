"""Dataset layouts: BraTS 2021, BraTS 2023 and BIDS folders read into subjects; clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrtranslate.errors import DatasetLayoutError, MRTranslateError
from mrtranslate.imaging.layout import Subject, file_role, find_subjects


def touch(root: Path, *relative: str) -> None:
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("BraTS2021_00000_t1.nii.gz", "t1"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
        ("BraTS2021_00000_t2.nii.gz", "t2"),
        ("BraTS2021_00000_flair.nii.gz", "flair"),
        ("BraTS2021_00000_seg.nii.gz", "seg"),
        ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-seg.nii.gz", "seg"),
        ("sub-01_T1w.nii.gz", "t1"),
        ("sub-01_ce-gadolinium_T1w.nii.gz", "t1ce"),
        ("sub-01_ses-02_run-1_T2w.nii", "t2"),
        ("sub-01_FLAIR.nii.gz", "flair"),
        ("sub-01_desc-tumor_dseg.nii.gz", "seg"),
        ("case_t2-flair.nii.gz", "flair"),
        # not images of a modality: a mask named after its T1, sidecars, other suffixes, other extensions
        ("sub-01_T1w_brainmask.nii.gz", None),
        ("sub-01_T1w.json", None),
        ("sub-01_bold.nii.gz", None),
        ("case_t1.mgz", None),
        ("t1_notes.txt", None),
    ],
)
def test_file_role(name: str, role: str | None) -> None:
    assert file_role(name) == role


def test_brats2021_layout(tmp_path: Path) -> None:
    for case in ("BraTS2021_00002", "BraTS2021_00000"):
        touch(tmp_path, *(f"{case}/{case}_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")))
    touch(tmp_path, "BraTS2021_00000/notes.txt", "dataset.json")  # ignored
    subjects = find_subjects(tmp_path)
    assert [s.case for s in subjects] == ["BraTS2021_00000", "BraTS2021_00002"]
    first = subjects[0]
    assert list(first.files) == ["t1", "t1ce", "t2", "flair"]  # canonical order, whatever the file order
    assert first.files["t1ce"] == tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz"
    assert first.seg == tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert first.modalities == ["t1", "t1ce", "t2", "flair"]


def test_brats2023_layout_without_labels(tmp_path: Path) -> None:
    case = "BraTS-GLI-00005-000"
    touch(tmp_path, *(f"{case}/{case}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")))
    (subject,) = find_subjects(str(tmp_path))
    assert subject.case == case
    assert {m: p.name for m, p in subject.files.items()} == {
        "t1": f"{case}-t1n.nii.gz",
        "t1ce": f"{case}-t1c.nii.gz",
        "t2": f"{case}-t2w.nii.gz",
        "flair": f"{case}-t2f.nii.gz",
    }
    assert subject.seg is None


def test_bids_layout_with_and_without_sessions(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "dataset_description.json",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-01/anat/sub-01_T1w_brainmask.nii.gz",
        "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz",
        "sub-02/ses-post/anat/sub-02_ses-post_FLAIR.nii.gz",
        "sub-02/ses-post/func/sub-02_ses-post_bold.nii.gz",
        "derivatives/README",
        ".git/HEAD",
    )
    subjects = find_subjects(tmp_path)
    assert [s.case for s in subjects] == ["sub-01", "sub-02_ses-post", "sub-02_ses-pre"]
    assert list(subjects[0].files) == ["t1", "t1ce", "t2", "flair"]
    assert subjects[0].files["t1"].name == "sub-01_T1w.nii.gz"
    assert subjects[0].files["t1ce"].name == "sub-01_ce-gadolinium_T1w.nii.gz"
    assert list(subjects[1].files) == ["flair"]
    assert list(subjects[2].files) == ["t1"]


def test_a_subject_folder_itself_is_one_subject(tmp_path: Path) -> None:
    case = tmp_path / "BraTS2021_00042"
    touch(case, "BraTS2021_00042_t1.nii.gz", "BraTS2021_00042_t2.nii.gz")
    (subject,) = find_subjects(case)
    assert subject == Subject(
        case="BraTS2021_00042",
        files={"t1": case / "BraTS2021_00042_t1.nii.gz", "t2": case / "BraTS2021_00042_t2.nii.gz"},
    )


def test_folders_without_modalities_are_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "a/a_t1.nii.gz", "labels_only/labels_only_seg.nii.gz", "empty/readme.md")
    assert [s.case for s in find_subjects(tmp_path)] == ["a"]


@pytest.mark.parametrize("content", [(), ("x/notes.txt", "y/y_bold.nii.gz", "z_t1.json")])
def test_no_subjects_is_a_clear_error(tmp_path: Path, content: tuple[str, ...]) -> None:
    touch(tmp_path, *content)
    with pytest.raises(DatasetLayoutError, match="no subjects found") as info:
        find_subjects(tmp_path)
    assert isinstance(info.value, MRTranslateError)
    assert "BraTS 2021" in str(info.value) and "BIDS" in str(info.value)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        find_subjects(tmp_path / "nowhere")
    touch(tmp_path, "file.nii.gz")
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        find_subjects(tmp_path / "file.nii.gz")


def test_two_files_of_one_modality_are_ambiguous(tmp_path: Path) -> None:
    touch(tmp_path, "sub-01/anat/sub-01_run-1_T1w.nii.gz", "sub-01/anat/sub-01_run-2_T1w.nii.gz")
    with pytest.raises(DatasetLayoutError, match="two t1 images: sub-01_run-1_T1w.nii.gz and sub-01_run-2_T1w"):
        find_subjects(tmp_path)


def test_two_label_maps_are_ambiguous(tmp_path: Path) -> None:
    touch(tmp_path, "c/c_t1.nii.gz", "c/c_seg.nii.gz", "c/c-seg.nii")
    with pytest.raises(DatasetLayoutError, match="two label maps"):
        find_subjects(tmp_path)


def test_translations_written_beside_their_inputs_do_not_confuse_the_reader(tmp_path: Path) -> None:
    """`mrtranslate c_t1.nii.gz --to flair` writes c_t1_flair.nii.gz next to c_flair.nii.gz: the layout name wins."""
    touch(tmp_path, "c/c_t1.nii.gz", "c/c_flair.nii.gz", "c/c_t1_flair.nii.gz")
    (subject,) = find_subjects(tmp_path)
    assert subject.files == {"t1": tmp_path / "c" / "c_t1.nii.gz", "flair": tmp_path / "c" / "c_flair.nii.gz"}
