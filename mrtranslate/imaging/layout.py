"""Dataset folders: find the subjects of a folder and each subject's modality and label files.

Four layouts are recognised, each one subject per folder:

* BraTS 2021: ``<case>/<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``
* BraTS 2023: ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``
* BraTS toolkit (brain-extracted): ``<case>/<case>_t1_bet.nii.gz``, ``_t1c_bet``, ``_t2_bet``, ``_fla_bet``
* BIDS: ``sub-XX/anat/sub-XX_T1w.nii.gz`` (``_ce-gadolinium_T1w``, ``_T2w``, ``_FLAIR``), optionally with
  sessions ``sub-XX/ses-YY/anat/``; each session is one subject named ``sub-XX_ses-YY``.

A file's role comes from the last token of its name (its BIDS suffix or BraTS ending), so that
``sub-01_T1w_brainmask.nii.gz`` or ``case_t1_bias.nii.gz`` are ignored rather than mistaken for a T1; a
last token that only says the scan was skull-stripped (``bet``, ``brain``, ``skullstripped``) is skipped.
A folder that holds modality files itself and no subject folders is read as one subject.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetLayoutError, ModalityError
from ..modalities import MODALITIES, canonical, guess_from_filename

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
SEG_TOKENS: frozenset[str] = frozenset({"seg", "dseg"})
# Name endings that say how a scan was processed, not what it is: the token before them names the scan.
STRIPPED_TOKENS: frozenset[str] = frozenset({"bet", "brain", "skullstripped"})


@dataclass
class Subject:
    """One subject: its case name, its images by canonical modality, and its label map if any."""

    case: str
    files: dict[str, Path] = field(default_factory=dict)
    seg: Path | None = None

    @property
    def modalities(self) -> list[str]:
        """The canonical modalities this subject has, in the canonical order."""
        return [m for m in MODALITIES if m in self.files]


def _stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return None


def file_role(filename: str) -> str | None:
    """The role of an image file: a canonical modality, ``"seg"``, or None for anything else.

    >>> file_role("BraTS2021_00000_t1ce.nii.gz"), file_role("BraTS-GLI-00000-000-t2f.nii.gz")
    ('t1ce', 'flair')
    >>> file_role("sub-01_ce-gadolinium_T1w.nii.gz"), file_role("sub-01_T1w_brainmask.nii.gz")
    ('t1ce', None)
    >>> file_role("TCGA-FG-6692_fla_bet.nii.gz")
    'flair'
    """
    stem = _stem(Path(filename).name)
    if stem is None:
        return None
    while True:  # drop skull-stripping endings (<case>_t1_bet)
        head, _, last = stem.rpartition("_")
        if not head or last not in STRIPPED_TOKENS:
            break
        stem = head
    # The last "_" token first (keeps aliases such as "t2-flair"), then the last "-" token (BraTS 2023).
    candidates = [stem.rsplit("_", 1)[-1]]
    candidates.append(re.split(r"[_-]", stem)[-1])
    for token in candidates:
        if token in SEG_TOKENS:
            return "seg"
        try:
            modality = canonical(token)
        except ModalityError:
            continue
        if modality == "t1" and guess_from_filename(stem) == "t1ce":
            return "t1ce"  # BIDS: sub-01_ce-gadolinium_T1w
        return modality
    return None


def _is_layout_name(case: str, path: Path) -> bool:
    """``<case>_<modality>`` or ``<case>-<modality>``: the exact name of the BraTS layouts (one token after the case)."""
    stem = _stem(path.name) or ""
    rest = stem[len(case):] if stem.startswith(case.lower()) else ""
    return len(rest) > 1 and rest[0] in "_-" and not re.search(r"[_-]", rest[1:])


def _subject_from_files(case: str, folder: Path) -> Subject | None:
    subject = Subject(case=case)
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        role = file_role(path.name)
        if role is not None:
            found.setdefault(role, []).append(path)
    for role, paths in found.items():
        if len(paths) > 1:
            # e.g. <case>_flair.nii.gz beside a derived <case>_t1_flair.nii.gz (a translation written next to
            # its input): the exact layout name wins; otherwise the choice is the user's
            exact = [p for p in paths if _is_layout_name(case, p)]
            if len(exact) != 1:
                what = "label maps" if role == "seg" else f"{role} images"
                raise DatasetLayoutError(
                    f"subject {case!r} has two {what}: {paths[0].name} and {paths[1].name} in {folder}; "
                    "keep one (move or rename the other)"
                )
            paths = exact
        if role == "seg":
            subject.seg = paths[0]
        else:
            subject.files[role] = paths[0]
    if not subject.files:
        return None
    subject.files = {m: subject.files[m] for m in MODALITIES if m in subject.files}
    return subject


def _subjects_in(folder: Path) -> list[Subject]:
    """Subjects held by one subject folder: BraTS files in it, or BIDS ``anat/`` (per session)."""
    found: list[Subject] = []
    direct = _subject_from_files(folder.name, folder)
    if direct is not None:
        found.append(direct)
    anat = folder / "anat"
    if anat.is_dir():
        bids = _subject_from_files(folder.name, anat)
        if bids is not None:
            found.append(bids)
    for session in sorted(p for p in folder.glob("ses-*") if p.is_dir()):
        if (session / "anat").is_dir():
            bids = _subject_from_files(f"{folder.name}_{session.name}", session / "anat")
            if bids is not None:
                found.append(bids)
    return found


def find_subjects(root: Path | str, require: Sequence[str] = ()) -> list[Subject]:
    """All subjects of a dataset folder, sorted by case name.

    Raises ``DatasetLayoutError`` when ``root`` is not a folder, when it holds no subject in any of the
    recognised layouts, when a subject has two files for one modality, or when a subject lacks one of the
    modalities in ``require`` (names or aliases; empty: any subset is accepted).
    """
    required = [canonical(m) for m in require]
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist or is not a folder; pass a folder of subjects")
    subjects: list[Subject] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        subjects.extend(_subjects_in(folder))
    if not subjects:
        single = _subject_from_files(root.name, root)
        if single is not None:
            subjects.append(single)
    if not subjects:
        raise DatasetLayoutError(
            f"no subjects found in {root}: expected BraTS 2021 (<case>/<case>_t1.nii.gz, _t1ce, _t2, _flair), "
            "BraTS 2023 (<case>/<case>-t1n.nii.gz, -t1c, -t2w, -t2f) or BIDS (sub-XX/anat/sub-XX_T1w.nii.gz) files"
        )
    cases = [s.case for s in subjects]
    duplicates = sorted({c for c in cases if cases.count(c) > 1})
    if duplicates:
        raise DatasetLayoutError(
            f"subject {duplicates[0]!r} appears twice in {root} (files both in its folder and in anat/); "
            "keep one layout per subject"
        )
    for subject in subjects:
        missing = [m for m in required if m not in subject.files]
        if missing:
            have = ", ".join(p.name for p in subject.files.values())
            raise DatasetLayoutError(
                f"subject {subject.case!r} in {root} has no {' or '.join(missing)} image (its files: {have}); "
                "add the missing scan or move the subject out of the folder"
            )
    return sorted(subjects, key=lambda s: s.case)
