"""DICOM series: a folder holding one series is read as a :class:`Volume` with the series' geometry.

Needs the preprocess extra (SimpleITK, whose GDCM reader sorts the slices by position, applies the rescale
slope and intercept, and builds the orientation from Image Orientation / Position (Patient)). A folder is
a DICOM folder when files directly in it are DICOM files (subfolders are not searched). A folder
with several series is refused with a one-line list of them (series UID, description, slice count): pass
the folder of one series, as a scanner export or ``dcm2niix`` would separate them.

Outputs of a DICOM input are NIfTI files on the series' grid (the affine SimpleITK reports, as RAS).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputImageError
from .sitk_bridge import affine_of, array_of, sitk

logger = logging.getLogger("mrtranslate.volumes")

_DESCRIPTION = "0008|103e"  # Series Description


def _series_ids(folder: Path) -> list[str]:
    s = sitk("reading DICOM folders")
    return list(s.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def _looks_like_dicom(path: Path) -> bool:
    """A file that starts with a DICOM preamble (``DICM`` at byte 128), or has a ``.dcm``/``.ima`` name."""
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files directly (checked on the files' bytes: no SimpleITK needed)."""
    if not folder.is_dir():
        return False
    return any(p.is_file() and _looks_like_dicom(p) for p in sorted(folder.iterdir())[:64])


def _tag(files: list[str], key: str) -> str:
    s = sitk()
    reader = s.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def describe_series(folder: Path) -> list[tuple[str, str, int]]:
    """``(series UID, description, number of files)`` of every series directly in ``folder``."""
    s = sitk("reading DICOM folders")
    out = []
    for uid in _series_ids(folder):
        files = list(s.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        out.append((uid, _tag(files, _DESCRIPTION), len(files)))
    return out


def read_dicom_series(folder: str | Path, name: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The voxels (float32, indexed i, j, k), RAS affine and a name of the one series in ``folder``.

    Raises :class:`InputImageError` for a folder without a readable series or with several series.
    """
    folder = Path(folder)
    s = sitk(f"reading the DICOM folder {folder}")
    series = describe_series(folder)
    if not series:
        raise InputImageError(f"{folder} holds no DICOM series SimpleITK can read: pass a folder with the "
                              "files of one series (or a .nii.gz file)")
    if len(series) > 1:
        listed = "; ".join(f"{uid} ({desc or 'no description'}, {n} files)" for uid, desc, n in series)
        raise InputImageError(f"{folder} holds {len(series)} DICOM series: {listed}; put each series in its "
                              "own folder and pass that folder")
    uid, desc, n = series[0]
    reader = s.ImageSeriesReader()
    reader.SetFileNames(s.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    reader.SetOutputPixelType(s.sitkFloat32)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[-160:]
        raise InputImageError(f"{folder}: the DICOM series {uid} cannot be read ({msg}): re-export it") from None
    if img.GetDimension() != 3 or min(img.GetSize()) < 2:
        raise InputImageError(f"{folder}: the DICOM series {uid} is not a 3D volume (size {img.GetSize()}): "
                              "pass a series of several slices")
    logger.info("%s: DICOM series %s (%s), %d files, size %s", folder, uid, desc or "no description", n,
                img.GetSize())
    return array_of(img).astype(np.float32, copy=False), affine_of(img), name or folder.name
