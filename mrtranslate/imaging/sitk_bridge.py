"""SimpleITK <-> :class:`Volume`, and the lazy import of the ``preprocess`` extra's libraries.

SimpleITK (DICOM series, registration, resampling) and HD-BET (brain extraction) come with
``pip install "mrtranslate[preprocess]"``; the core never imports them at module level, and a missing one
raises :class:`~mrtranslate.errors.MissingDependencyError` naming that command.

Geometry: a Volume's affine maps array indices ``(i, j, k)`` to RAS+ millimetres (NIfTI); a SimpleITK image
maps ``(i, j, k)`` to LPS millimetres through origin, spacing and direction, and its numpy view is indexed
``[k, j, i]``. The conversion is exact both ways (the same voxels, the same world positions).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..errors import MissingDependencyError

INSTALL_HINT = 'pip install "mrtranslate[preprocess]"'
_LPS = np.diag([-1.0, -1.0, 1.0])


def require(module: str, feature: str) -> Any:
    """Import ``module`` (a library of the preprocess extra) or raise a one-line MissingDependencyError."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{feature} needs the preprocess extra ({module} is not installed): "
                                     f"{INSTALL_HINT}") from None


def sitk(feature: str = "this feature") -> Any:
    """The SimpleITK module (raises MissingDependencyError when the extra is missing)."""
    return require("SimpleITK", feature)


def to_sitk(data: np.ndarray, affine: np.ndarray, feature: str = "this feature") -> Any:
    """A SimpleITK image of the array ``data`` (indexed i, j, k) on the grid of the RAS ``affine``."""
    s = sitk(feature)
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = _LPS @ (affine[:3, :3] / spacing)
    img = s.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    img.SetSpacing([float(z) for z in spacing])
    img.SetOrigin([float(o) for o in _LPS @ affine[:3, 3]])
    img.SetDirection([float(d) for d in direction.ravel()])
    return img


def affine_of(img: Any) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image."""
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction * spacing
    affine[:3, 3] = _LPS @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return affine


def array_of(img: Any) -> np.ndarray:
    """The voxels of a SimpleITK image as a numpy array indexed (i, j, k), as nibabel indexes them."""
    s = sitk()
    return np.ascontiguousarray(np.transpose(s.GetArrayFromImage(img), (2, 1, 0)))
