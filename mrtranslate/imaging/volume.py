"""``Volume``: a 3D image that never travels without its affine, and the loader that validates it.

Part of :mod:`mrtranslate.imaging`. Every input problem a user can cause raises
:class:`~mrtranslate.errors.InputImageError` with a one-line message saying what to do. Accommodated
instead of refused (each logged as a WARNING and tested):

* a singleton 4th (5th, ...) dimension is dropped;
* integer data with ``scl_slope``/``scl_inter`` is scaled as NIfTI prescribes (nibabel's ``dataobj``);
* NaN voxels become 0, i.e. background (masked images are often written with NaN outside the brain);
* a header with qform and sform codes both 0 is read with nibabel's fallback affine (outputs reuse the
  same header, so they still overlay the input; only "which way is RAS" is a guess);
* any format nibabel reads (NIfTI-1/2, MGH, Analyze) is accepted; non-NIfTI headers become NIfTI-1.

Refused: missing path, folder, empty or unreadable file, truncated data, complex/RGB data, 2D images,
4D images with several volumes, +-Inf voxels, constant volumes, singular or non-finite affines, fewer than
``MIN_VOXELS_PER_AXIS`` voxels or a field of view under ``MIN_FIELD_OF_VIEW_MM`` along an axis.
"""

from __future__ import annotations

import logging
import os
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from ..errors import InputImageError, MemoryBudgetError, OutputExistsError, OutputWriteError, UsageError, option

logger = logging.getLogger("mrtranslate.volumes")

MIN_VOXELS_PER_AXIS = 8
MIN_FIELD_OF_VIEW_MM = 50.0
MAX_VOXELS = 2**30  # 4 GiB as float32: beyond this resampling cannot be done in memory on usual machines

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# What nibabel and the decompressors raise for files that are not (complete) images.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, TypeError)


def _strip_suffix(filename: str) -> str:
    for ext in (".nii.gz", ".nii", ".mgz", ".mgh", ".img", ".hdr", ".gz"):
        if filename.lower().endswith(ext):
            return filename[: -len(ext)]
    return filename


def _sync_header(header: nib.Nifti1Header, affine: np.ndarray) -> None:
    """Make ``header`` describe ``affine`` exactly as nibabel would when saving (codes kept if it already does)."""
    if not np.allclose(affine, header.get_best_affine()):
        header.set_sform(affine, code="aligned")
        header.set_qform(affine, code="unknown")


@dataclass(eq=False)
class Volume:
    """A 3D image with its voxel-to-world (RAS+ mm) affine and a NIfTI header (for qform/sform codes).

    ``data`` is float32 and 3D; ``spacing`` and ``orientation`` are derived from ``affine``, never stored.
    Build one with :func:`load_volume` (validated) or the ``from_*`` classmethods. Without a header (arrays,
    non-NIfTI formats) the header is nibabel's default for the affine: sform code 2 (aligned), qform code 0.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        _check_dtype(data.dtype, self.label)
        if data.ndim != 3:
            raise InputImageError(f"{self.label}: Volume data must be 3D, got shape {data.shape}: pass one 3D volume")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputImageError(f"{self.label}: affine must be 4x4, got shape {affine.shape}")
        self.affine = affine
        if self.header is None:
            self.header = nib.Nifti1Image(self.data, self.affine).header.copy()
        elif not isinstance(self.header, nib.Nifti1Header):
            raise InputImageError(f"{self.label}: header must be a nibabel Nifti1Header or Nifti2Header")

    @property
    def label(self) -> str:
        """How messages name this volume."""
        return self.name or "input image"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes, e.g. ``'LPS'`` or ``'RAS'`` (nearest axes for oblique affines)."""
        return "".join(nib.aff2axcodes(self.affine))

    def __repr__(self) -> str:
        spacing = ", ".join(f"{z:.3g}" for z in self.spacing)
        return (
            f"Volume(name={self.name!r}, shape={self.shape}, spacing=({spacing}), "
            f"orientation={self.orientation!r}, dtype={self.data.dtype})"
        )

    def to_image(self) -> nib.Nifti1Image:
        """This volume as a float32 NIfTI image with its own header (qform/sform and codes kept)."""
        return image_on_grid(self.data, self.affine, self.header)

    @classmethod
    def from_file(cls, path: str | os.PathLike, name: str | None = None) -> Volume:
        return _from_file(Path(path), name)

    @classmethod
    def from_image(cls, img: SpatialImage, name: str | None = None) -> Volume:
        return _from_image(img, name)

    @classmethod
    def from_array(cls, data: np.ndarray, affine: np.ndarray, name: str | None = None) -> Volume:
        return _from_array(data, affine, name)


ImageSource = Union[str, os.PathLike, SpatialImage, "tuple[np.ndarray, np.ndarray]", Volume]


def load_volume(src: ImageSource, name: str | None = None) -> Volume:
    """Load and validate an image: a ``.nii``/``.nii.gz`` path, a nibabel image, ``(array, affine)``, or a Volume.

    Returns a float32 3D :class:`Volume` with scl_slope/scl_inter applied and the input's header (qform/sform
    and codes) kept. A Volume that passes validation unchanged is returned as it is.
    Raises :class:`~mrtranslate.errors.InputImageError` for anything unusable (see the module docstring).
    """
    if isinstance(src, Volume):
        data, affine = _checked(src.data, src.affine, src.label)
        if data is src.data and affine is src.affine and name in (None, src.name):
            return src
        return Volume(data, affine, src.header.copy(), name or src.name)
    if isinstance(src, (str, os.PathLike)):
        return _from_file(Path(src), name)
    if isinstance(src, SpatialImage):
        return _from_image(src, name)
    if isinstance(src, tuple) and len(src) == 2:
        return _from_array(src[0], src[1], name)
    raise InputImageError(
        f"cannot use an object of type {type(src).__name__} as an image: pass a .nii, .nii.gz or .mgz path, "
        "a nibabel image, an (array, affine) tuple or a Volume"
    )


def _from_file(path: Path, name: str | None) -> Volume:
    shown = str(path)
    if not path.exists():
        raise InputImageError(f"{shown} does not exist: check the path (current folder: {Path.cwd()})")
    if path.is_dir():
        from .dicom import is_dicom_folder, read_dicom_series  # DICOM needs the preprocess extra: lazily

        if is_dicom_folder(path):
            data, affine, series_name = read_dicom_series(path, name)
            return _from_array(data, affine, series_name)
        found = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(_NIFTI_SUFFIXES))
        hint = f" (it holds {len(found)} NIfTI files, e.g. {found[0]})" if found else ""
        raise InputImageError(
            f"{shown} is a folder{hint}: pass one .nii, .nii.gz or .mgz file, or a folder holding one DICOM series "
            "(convert other DICOM folders with dcm2niix first)"
        )
    if path.stat().st_size == 0:
        raise InputImageError(f"{shown} is empty (0 bytes): re-export or re-copy the image")
    try:
        img = nib.load(str(path), mmap=False)
    except PermissionError:
        raise InputImageError(f"{shown} cannot be read (permission denied): check the file's permissions") from None
    except _READ_ERRORS as exc:
        raise InputImageError(
            f"{shown} is not an image nibabel can read ({_one_line(exc)}): pass a .nii, .nii.gz or .mgz file "
            "(convert DICOM with dcm2niix)"
        ) from None
    if not isinstance(img, SpatialImage):
        raise InputImageError(f"{shown} is not a spatial image: pass a 3D .nii, .nii.gz or .mgz file")
    return _from_image(img, name or _strip_suffix(path.name), shown=shown)


def _from_image(img: SpatialImage, name: str | None, shown: str | None = None) -> Volume:
    filename = img.get_filename()
    if name is None and filename:
        name = _strip_suffix(Path(filename).name)
    label = shown or name or "input image"
    dtype = np.dtype(img.get_data_dtype())
    _check_dtype(dtype, label)
    shape3 = _spatial_shape(tuple(int(n) for n in img.shape), label)
    try:
        with np.errstate(all="ignore"):  # scaling may overflow; the values are checked below
            raw = np.asanyarray(img.dataobj)
    except MemoryError:
        raise MemoryBudgetError(f"{label}: not enough memory to read {img.shape} voxels: crop or downsample it") from None
    except _READ_ERRORS as exc:
        raise InputImageError(
            f"{label} is truncated or corrupted ({_one_line(exc)}): re-export or re-copy the file"
        ) from None
    _check_dtype(raw.dtype, label)  # scaling may change the dtype
    data, affine = _checked(raw.reshape(shape3), np.asarray(img.affine, dtype=np.float64), label)
    if (isinstance(raw, np.memmap) or isinstance(img.dataobj, np.ndarray)) and np.may_share_memory(data, raw):
        data = data.copy()  # never hold a view of the caller's array or of a memory-mapped file
    if isinstance(img.header, nib.Nifti1Header):
        header = img.header.copy()
        if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            logger.warning(
                "%s: header has no orientation (qform and sform codes are 0); using nibabel's fallback affine, "
                "so RAS orientation is a guess (outputs reuse the header and still overlay the input)",
                label,
            )
    else:
        header = nib.Nifti1Image(data, affine).header.copy()
    header.set_data_shape(shape3)
    _sync_header(header, affine)
    return Volume(data, affine, header, name)


def _from_array(data: np.ndarray, affine: np.ndarray, name: str | None) -> Volume:
    label = name or "input array"
    try:
        arr = np.asarray(data)
        aff = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputImageError(f"{label}: (array, affine) must hold numeric arrays ({_one_line(exc)})") from None
    _check_dtype(arr.dtype, label)
    shape3 = _spatial_shape(tuple(int(n) for n in arr.shape), label)
    checked, aff = _checked(arr.reshape(shape3), aff, label)
    if np.may_share_memory(checked, arr):  # never alias the caller's array
        checked = checked.copy()
    return Volume(checked, aff, None, name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_dtype(dtype: np.dtype, label: str) -> None:
    if dtype.fields is not None:
        raise InputImageError(f"{label} holds {dtype} (e.g. RGB) data, not intensities: pass a grayscale MR image")
    if dtype.kind == "c":
        raise InputImageError(f"{label} holds complex data: pass the magnitude image")
    if dtype.kind not in "biuf":
        raise InputImageError(f"{label} holds {dtype} data: pass a numeric grayscale MR image")


def _spatial_shape(shape: tuple[int, ...], label: str) -> tuple[int, int, int]:
    """The 3D shape of an image, dropping trailing singleton dimensions; refuse 2D and multi-volume images."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        extra = int(np.prod(dims[3:]))
        raise InputImageError(
            f"{label} is {len(dims)}D with {extra} volumes (shape {tuple(shape)}): pass a single 3D volume "
            "(e.g. extract one with fslroi in.nii.gz out.nii.gz 0 1)"
        )
    if len(dims) < 3 or min(dims) <= 1:
        n = sum(1 for d in dims if d > 1)
        what = f"is {n}D" if n else "holds a single voxel"
        raise InputImageError(f"{label} {what} (shape {tuple(shape)}): pass a 3D volume, not a single slice")
    if min(dims) < MIN_VOXELS_PER_AXIS:
        raise InputImageError(
            f"{label} has shape {tuple(dims)}, fewer than {MIN_VOXELS_PER_AXIS} voxels along an axis: "
            "too small to be a head; pass a 3D brain MRI"
        )
    if int(np.prod(dims)) > MAX_VOXELS:
        raise MemoryBudgetError(
            f"{label} has {int(np.prod(dims))} voxels (shape {tuple(dims)}), more than {MAX_VOXELS}: "
            "crop or downsample it first"
        )
    return dims[0], dims[1], dims[2]


def _checked(data: np.ndarray, affine: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a 3D array and its affine; return float32 data (NaN -> 0) and a float64 affine.

    Returns the very objects given when nothing had to change.
    """
    shape = _spatial_shape(tuple(int(n) for n in np.shape(data)), label)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputImageError(f"{label}: the affine is not a finite 4x4 matrix: fix the header (sform/qform, pixdim)")
    if not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputImageError(f"{label}: the affine's last row is {affine[3].tolist()}, not [0, 0, 0, 1]: fix the header")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    det = abs(float(np.linalg.det(affine[:3, :3])))
    if np.any(zooms <= 0) or det <= 1e-6 * float(np.prod(zooms)):
        raise InputImageError(
            f"{label}: the affine is singular (voxel sizes {np.round(zooms, 4).tolist()} mm): "
            "fix the header's pixdim/sform/qform"
        )
    fov = np.asarray(shape) * zooms
    if np.any(fov < MIN_FIELD_OF_VIEW_MM):
        raise InputImageError(
            f"{label}: field of view {np.round(fov, 1).tolist()} mm is under {MIN_FIELD_OF_VIEW_MM:g} mm along an "
            "axis: too small to be a head; pass a whole-brain 3D MRI (or fix the voxel sizes in the header)"
        )
    if data.dtype == np.float32 and data.flags.c_contiguous:
        out = data
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(data, dtype=np.float32)
    if out.dtype.kind == "f":
        finite = np.isfinite(out)
        if not finite.all():
            n_inf = int(np.isinf(out).sum())
            if n_inf:
                raise InputImageError(
                    f"{label} has {n_inf} infinite voxels (or values beyond float32): replace them, "
                    "e.g. with numpy.nan_to_num, and save again"
                )
            n_nan = int((~finite).sum())
            logger.warning("%s: %d NaN voxels treated as background (0)", label, n_nan)
            out = np.where(finite, out, np.float32(0))
    lo, hi = float(out.min()), float(out.max())
    if lo == hi:
        raise InputImageError(f"{label} is constant (every voxel is {lo:g}): nothing to translate; pass the MR image")
    return out, affine


def image_on_grid(data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header) -> nib.Nifti1Image:
    """A float32, unscaled NIfTI image of ``data`` with ``affine`` and a copy of ``header``'s geometry.

    qform, sform and their codes, pixdim and units come from ``header``; scl_slope/scl_inter are reset
    (NaN: no scaling) and cal_min/cal_max cleared. NIfTI-2 headers give a NIfTI-2 image.
    """
    hdr = header.copy()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape(data.shape)
    hdr["scl_slope"] = np.nan
    hdr["scl_inter"] = np.nan
    hdr["cal_min"] = 0.0
    hdr["cal_max"] = 0.0
    _sync_header(hdr, affine)
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    return cls(np.asarray(data, dtype=np.float32), affine.copy(), hdr)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def save_image(
    img: nib.Nifti1Image | Volume,
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write ``img`` to ``path`` (``.nii`` or ``.nii.gz``) atomically and return the path.

    The image goes to a temporary file in the same folder, then takes its final name in one step, so a
    crash never leaves a partial file. An existing file is only replaced with ``overwrite=True``; a path in
    ``inputs`` (the images a run reads) is never replaced. Missing parent folders are created.
    """
    target = Path(path)
    if not target.name.lower().endswith(_NIFTI_SUFFIXES):
        raise UsageError(f"output {target} must end in .nii or .nii.gz")
    for src in inputs:
        if _same_file(target, Path(src)) or target.resolve() == Path(src).resolve():
            raise OutputExistsError(f"output {target} would replace the input {src}: choose another output name")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists: pass {option('overwrite', True)} or choose another name")
    if isinstance(img, Volume):
        img = img.to_image()
    suffix = ".nii.gz" if target.name.lower().endswith(".nii.gz") else ".nii"
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(tmp))
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_replace(tmp, target)
    except OSError as exc:
        raise OutputWriteError(f"could not write {target} ({_one_line(exc)}): check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _move_no_replace(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` unless a file took that name meanwhile (hard link: atomic when supported)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(f"{target} exists: pass {option('overwrite', True)} or choose another name") from None
    except OSError:  # file systems without hard links
        if target.exists():
            raise OutputExistsError(f"{target} exists: pass {option('overwrite', True)} or choose another name") from None
        os.replace(tmp, target)
