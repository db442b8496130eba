"""Geometry helpers of :mod:`mrtranslate.imaging`: RAS reordering, foreground boxes, smoothing, trilinear sampling.

Pure numpy/torch on arrays and 4x4 voxel-to-world affines; no file I/O. Trilinear sampling is
``torch.nn.functional.grid_sample`` with ``align_corners=True``: normalised coordinate -1 is the centre of
voxel 0 and +1 the centre of voxel n-1, so a continuous voxel index ``c`` maps to ``2 c / (n - 1) - 1``.
Samples whose 2x2x2 neighbourhood leaves the array get zeros for the missing corners.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))
_CHUNK_POINTS = 1 << 21  # sample at most this many points at once (bounds temporary memory to ~100 MB)


def ras_reorder(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Exact voxel reordering (flips and axis swaps only) that brings an image closest to RAS.

    Returns ``(to_ras, from_ras, ras_affine, ras_shape)``: nibabel orientation arrays for
    ``apply_orientation`` in both directions, and the affine and shape of the reordered array.
    """
    current = nib.orientations.io_orientation(affine)
    to_ras = nib.orientations.ornt_transform(current, _RAS)
    from_ras = nib.orientations.ornt_transform(_RAS, current)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(to_ras, shape)
    ras_shape = tuple(int(shape[int(i)]) for i in np.argsort(to_ras[:, 0]))
    return to_ras, from_ras, ras_affine, ras_shape


def is_aligned_at_spacing(ras_affine: np.ndarray, spacing: tuple[float, ...], rel_tol: float = 1e-4) -> bool:
    """True when a RAS-reordered affine is diagonal with exactly ``spacing`` (to ``rel_tol``): no resampling needed.

    The tolerance absorbs float32 header rounding; 1e-4 of a voxel over a 256-voxel axis is a 0.03 mm drift.
    """
    m = ras_affine[:3, :3]
    s = np.asarray(spacing, dtype=np.float64)
    off = m - np.diag(np.diag(m))
    return bool(np.all(np.abs(np.diag(m) - s) <= rel_tol * s) and np.all(np.abs(off) <= rel_tol * s[None, :]))


def foreground_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel-index bounds ``(lo, hi)`` of the True voxels of a 3D mask (which must have one)."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]))
    return np.asarray(lo), np.asarray(hi)


def foreground_world_box(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space (mm) bounds of the centres of the True voxels of a 3D mask.

    A linear function's extremes over a set of voxels are reached at the first or last voxel of some row,
    so only the two ends of each row along the last axis are mapped to world coordinates.
    """
    rows = mask.any(axis=2)
    first = np.argmax(mask, axis=2)
    last = mask.shape[2] - 1 - np.argmax(mask[:, :, ::-1], axis=2)
    i0, i1 = np.nonzero(rows)
    ends = np.concatenate([first[i0, i1], last[i0, i1]])
    idx = np.stack([np.concatenate([i0, i0]), np.concatenate([i1, i1]), ends]).astype(np.float64)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def antialias_sigmas(from_spacing: np.ndarray, to_spacing: np.ndarray) -> np.ndarray:
    """Gaussian sigma (in voxels of the finer grid) to apply before sampling at a coarser spacing.

    ``(factor - 1) / 2`` per axis, as scikit-image's ``resize(anti_aliasing=True)``; 0 where not coarser.
    """
    factor = np.asarray(to_spacing, dtype=np.float64) / np.asarray(from_spacing, dtype=np.float64)
    return np.maximum(factor - 1.0, 0.0) / 2.0


def gaussian_smooth(volume: np.ndarray, sigmas: np.ndarray, min_sigma: float = 0.1) -> np.ndarray:
    """Separable Gaussian filter (edges replicated) along each axis whose sigma, in voxels, reaches ``min_sigma``.

    Below 0.1 voxel the kernel's side taps are under 1e-21: the filter would be the identity. Each axis is
    a weighted sum of shifted copies (a few multiply-adds per voxel; far faster than conv1d on CPU here).
    """
    out = np.asarray(volume, dtype=np.float32)
    for axis, sigma in enumerate(np.asarray(sigmas, dtype=np.float64)):
        if sigma < min_sigma:
            continue
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps = (taps / taps.sum()).astype(np.float32)
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="edge")
        n = out.shape[axis]
        acc = np.zeros(out.shape, dtype=np.float32)
        for k, w in enumerate(taps):
            window = [slice(None)] * out.ndim
            window[axis] = slice(k, k + n)
            acc += w * padded[tuple(window)]
        out = acc
    return np.ascontiguousarray(out)


def sample_trilinear(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of a 3D array at continuous voxel indices ``coords`` (shape ``(..., 3)``), zeros outside."""
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    shape = np.asarray(volume.shape, dtype=np.float64)
    flat = coords.reshape(-1, 3)
    out = np.empty(flat.shape[0], dtype=np.float32)
    # grid_sample's last grid axis lists (x, y, z) = (last, middle, first) array axis.
    scale = (2.0 / (shape - 1.0))[::-1].copy()
    with torch.no_grad():
        for start in range(0, flat.shape[0], _CHUNK_POINTS):
            part = flat[start : start + _CHUNK_POINTS, ::-1].astype(np.float64) * scale - 1.0
            grid = torch.from_numpy(part.astype(np.float32)).view(1, 1, 1, -1, 3)
            res = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[start : start + part.shape[0]] = res.view(-1).numpy()
    return out.reshape(coords.shape[:-1])


def grid_points(transform: np.ndarray, shape: tuple[int, int, int], start: int, stop: int) -> np.ndarray:
    """``transform`` (4x4) applied to the voxel indices of slabs ``start:stop`` (first axis) of a grid: ``(..., 3)``."""
    i0 = np.arange(start, stop, dtype=np.float64)[:, None, None]
    i1 = np.arange(shape[1], dtype=np.float64)[None, :, None]
    i2 = np.arange(shape[2], dtype=np.float64)[None, None, :]
    m, t = transform[:3, :3], transform[:3, 3]
    pts = np.empty((stop - start, shape[1], shape[2], 3), dtype=np.float64)
    for k in range(3):
        pts[..., k] = m[k, 0] * i0 + m[k, 1] * i1 + m[k, 2] * i2 + t[k]
    return pts


def resample_to_spacing(data: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``data`` on an axis-aligned RAS grid of ``spacing`` mm covering the same field of view: ``(array, affine)``.

    The same interpolation as the model's resampled path (Gaussian anti-aliasing along axes that become
    coarser, then trilinear), so that training data resampled here matches what inference feeds the model.
    The new grid's first voxel centre is the world-space minimum of the input's voxel centres; images of one
    subject that share a grid (co-registered scans) stay voxel-aligned after resampling.
    """
    shape = np.asarray(data.shape[:3])
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)],
                       dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    wmin, wmax = world.min(axis=0), world.max(axis=0)
    step = np.asarray(spacing, dtype=np.float64)
    out_shape = tuple(int(n) for n in np.floor((wmax - wmin) / step + 1e-6).astype(int) + 1)
    out_affine = np.diag([*step, 1.0])
    out_affine[:3, 3] = wmin
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    directions = np.abs(affine[:3, :3] / zooms)
    model_along_input = np.sqrt(((directions * step[:, None]) ** 2).sum(axis=0))
    src = gaussian_smooth(data, antialias_sigmas(zooms, model_along_input))
    input_from_out = np.linalg.inv(affine) @ out_affine
    out = np.empty(out_shape, dtype=np.float32)
    slab = max(1, _CHUNK_POINTS // int(out_shape[1] * out_shape[2]))
    for start in range(0, out_shape[0], slab):
        stop = min(out_shape[0], start + slab)
        out[start:stop] = sample_trilinear(src, grid_points(input_from_out, out_shape, start, stop))
    return out, out_affine
