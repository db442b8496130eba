"""Synthetic heads for the volumes tests: an ellipsoid "brain" with smooth structure, defined in world space.

Because the phantom is a function of world (RAS mm) coordinates, the same object can be sampled on any
grid (oblique, anisotropic, LPS, ...) and the tests can compare what lands where.
"""

from __future__ import annotations

import numpy as np

BRAIN_SEMI_AXES_MM = (62.0, 80.0, 58.0)  # R-L, A-P, I-S: fits the published 144 x 192 x 144 grid


def rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation matrix about x, then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def make_affine(shape: tuple[int, int, int], zooms_signed: tuple[float, float, float],
                rot_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
                centre_mm: tuple[float, float, float] = (2.0, -3.0, 5.0)) -> np.ndarray:
    """Affine with voxel axes ``rotation @ diag(zooms_signed)`` whose array centre sits at ``centre_mm``.

    Negative zooms flip axes: (-1, -1, 1) is LPS, (-1, 1, 1) the left-handed LAS.
    """
    m = rotation(*rot_deg) @ np.diag(zooms_signed)
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = np.asarray(centre_mm) - m @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def world_coords(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape ``(*shape, 3)`` (float32: the tests' volumes are big)."""
    axes = [np.arange(n, dtype=np.float32).reshape([-1 if a == k else 1 for a in range(3)]) for k, n in enumerate(shape)]
    out = np.empty((*shape, 3), dtype=np.float32)
    for row in range(3):
        m = affine[row, :3].astype(np.float32)
        out[..., row] = m[0] * axes[0] + m[1] * axes[1] + m[2] * axes[2] + np.float32(affine[row, 3])
    return out


def phantom_values(w: np.ndarray, centre_mm=(2.0, -3.0, 5.0), semi_axes=BRAIN_SEMI_AXES_MM) -> np.ndarray:
    """Intensity of the phantom at world points ``w`` (..., 3): 0 outside the ellipsoid, 40..~200 inside."""
    x, y, z = (w[..., k] - np.float32(centre_mm[k]) for k in range(3))
    r2 = (x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 + (z / semi_axes[2]) ** 2
    inside = 120.0 + 35.0 * np.sin(x / 11.0) * np.cos(y / 14.0) + 25.0 * np.cos(z / 9.0) - 40.0 * r2
    # a "ventricle": darker smooth blob left of centre
    inside -= 45.0 * np.exp(-(((x + 12) / 9.0) ** 2 + (y / 16.0) ** 2 + ((z - 6) / 8.0) ** 2))
    return np.where(r2 < 1.0, inside, 0.0)


def phantom(shape: tuple[int, int, int], affine: np.ndarray, **kw) -> np.ndarray:
    """The phantom sampled at the voxel centres of a grid, float32."""
    return phantom_values(world_coords(shape, affine), **kw).astype(np.float32)


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 6-neighbourhood, ``steps`` times (voxels at the array border are dropped)."""
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        for axis in range(3):
            for shift in (1, -1):
                inner &= np.roll(out, shift, axis=axis)
        inner[[0, -1], :, :] = False
        inner[:, [0, -1], :] = False
        inner[:, :, [0, -1]] = False
        out = inner
    return out
