"""Inputs and models for the Translator, CLI and reliability tests.

* ``head_image``: a smooth ellipsoid "brain" (positive inside, 0 outside) defined in world (RAS mm)
  coordinates, so it can be sampled on any grid: LPS, oblique, anisotropic, with chosen qform/sform codes.
* ``small_model`` / ``grid_model``: tiny random-weight model folders (``tests/_tiny.py``) whose grids cover
  the head: 16x24x16 at 4 mm (the cheapest; for the CLI) and 32x48x32 at 2 mm (for geometry).
* ``oblique``: a head file on an LPS, anisotropic, oblique grid (``OBLIQUE``), for outputs that must come
  back on exactly that grid.
* ``files_under``, ``assert_same_geometry``, ``arr``: what the tests compare.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _tiny import save_tiny

#: Semi-axes (R-L, A-P, I-S) of the head: fits the 64 x 96 x 64 mm field of view of both test models.
SEMI_AXES_MM = (27.0, 40.0, 25.0)
CENTRE_MM = (3.0, -4.0, 6.0)

#: LPS, anisotropic, oblique: shape, signed voxel sizes (mm) and rotation (degrees) of the ``oblique`` file
OBLIQUE = {"shape": (22, 30, 12), "zooms": (-3.0, -3.0, 5.0), "rotation": (8.0, -5.0, 10.0)}

SMALL = {"grid": (16, 24, 16), "spacing": (4.0, 4.0, 4.0)}
GRID = {"grid": (32, 48, 32), "spacing": (2.0, 2.0, 2.0)}


def rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad([rx_deg, ry_deg, rz_deg])
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


def grid_affine(shape: tuple[int, int, int], zooms_signed: tuple[float, float, float],
                rot_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel axes ``rotation @ diag(zooms_signed)`` with the array centre at the head's centre.

    Negative zooms flip axes: ``(-z, -z, z)`` is LPS.
    """
    m = rotation(*rot_deg) @ np.diag(zooms_signed)
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = np.asarray(CENTRE_MM) - m @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def head_values(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The head sampled at the voxel centres of a grid: float32, 0 outside, about 45..175 inside."""
    idx = np.indices(shape, dtype=np.float64)
    w = np.moveaxis(np.tensordot(affine[:3, :3], idx, axes=1), 0, -1) + affine[:3, 3]
    p = (w - np.asarray(CENTRE_MM)) / np.asarray(SEMI_AXES_MM)
    r2 = (p**2).sum(axis=-1)
    x, y, z = np.moveaxis(w - np.asarray(CENTRE_MM), -1, 0)
    inside = 120.0 + 25.0 * np.sin(x / 7.0) * np.cos(y / 9.0) + 15.0 * np.cos(z / 6.0) - 30.0 * r2
    return np.where(r2 < 1.0, inside, 0.0).astype(np.float32)


def head_image(shape: tuple[int, int, int], affine: np.ndarray, *, qform_code: int = 1,
               sform_code: int = 1) -> nib.Nifti1Image:
    """A float32 NIfTI of the head on the grid ``(shape, affine)`` with the given qform/sform codes."""
    img = nib.Nifti1Image(head_values(shape, affine), affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_xyzt_units("mm", "sec")
    return img


def write_head(path: Path, shape: tuple[int, int, int] = (20, 26, 18),
               zooms: tuple[float, float, float] = (4.0, 4.0, 4.0), **kwargs) -> Path:
    """Save a head to ``path`` (defaults: RAS 4 mm, i.e. the small model's exact path) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(head_image(shape, grid_affine(shape, zooms), **kwargs), str(path))
    return path


def files_under(folder: Path) -> set[str]:
    """Every file under ``folder`` (hidden and temporary ones included), relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def arr(img: nib.Nifti1Image) -> np.ndarray:
    """An image's voxels as float32."""
    return np.asarray(img.dataobj, dtype=np.float32)


def assert_same_geometry(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    """``out`` is on exactly ``ref``'s grid: shape, affine, qform and sform (with codes), voxel sizes, units."""
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine), (out.affine, ref.affine)
    for get in ("get_qform", "get_sform"):
        got, code = getattr(out.header, get)(coded=True)
        want, want_code = getattr(ref.header, get)(coded=True)
        assert int(code) == int(want_code), (get, code, want_code)
        assert (got is None and want is None) or np.array_equal(got, want), (get, got, want)
    assert np.array_equal(out.header.get_zooms()[:3], ref.header.get_zooms()[:3])
    assert out.header.get_xyzt_units() == ref.header.get_xyzt_units()
    assert out.get_data_dtype() == np.float32


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight model folder: grid 16x24x16 at 4 mm, 3 default steps, eta 1."""
    return save_tiny(tmp_path_factory.mktemp("models") / "small", **SMALL)


@pytest.fixture(scope="session")
def grid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight model folder: grid 32x48x32 at 2 mm."""
    return save_tiny(tmp_path_factory.mktemp("models") / "grid", **GRID)


@pytest.fixture()
def oblique(tmp_path: Path) -> Path:
    path = tmp_path / "sub-01_T1w.nii.gz"
    shape = OBLIQUE["shape"]
    nib.save(head_image(shape, grid_affine(shape, OBLIQUE["zooms"], OBLIQUE["rotation"]), qform_code=1, sform_code=2),
             str(path))
    return path
