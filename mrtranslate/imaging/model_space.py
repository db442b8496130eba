"""NIfTI <-> model space, with an exact inverse. The only module of mrtranslate that knows about geometry.

Forward (:func:`to_model_space`), as the published ALDM was trained (MONAI ``Orientation("RAS")``,
``CropForeground`` of voxels > 0, ``SpatialPad`` + ``CenterSpatialCrop`` to the grid,
``ScaleIntensityRangePercentiles(0.5, 99.5, -1, 1)`` without clipping):

1. load and validate the input (:func:`load_volume`);
2. foreground = voxels > 0; its bounding box is the region the model sees; values < 0 (around a real
   brain after interpolation) are background and become 0 before scaling;
3. geometry. *Exact path*: when the input, after exact voxel reordering to RAS (flips and axis swaps), is
   axis-aligned with exactly the model's ``spacing_mm``, crop to the foreground box and pad symmetrically /
   centre-crop to ``grid`` with integer offsets: no interpolation, bit for bit the published preprocessing.
   *Resampled path* (any other spacing, oblique affines): the model grid is an axis-aligned RAS grid of
   ``spacing_mm`` centred on the centre of the foreground's world bounding box; each model voxel goes
   model voxel -> world -> input voxel and is sampled trilinearly (zeros outside the input and outside the
   foreground box). Input axes finer than the model spacing are Gaussian-smoothed first (anti-aliasing);
4. intensities: ``v = -1 + 2 (x - p_lo) / (p_hi - p_lo)`` with ``p_lo``, ``p_hi`` the
   ``lower_percentile``/``upper_percentile`` (published 0.5/99.5) of the whole grid volume, background
   included; not clipped. The tensor is float32 ``[1, 1, *grid]``.

Brain larger than the grid: the grid is centre-cropped as the authors do, a WARNING says how many mm are
cut on which side of each axis, and the inverse writes 0 there.

Inverse (:class:`ModelSpaceInverse`): every input voxel goes input voxel -> world -> model voxel and the
model output is sampled there (integer indexing on the exact path, trilinear otherwise; model axes coarser
in the input than in the model are smoothed first). The output image is float32 with exactly the input's
shape, affine, qform and sform (codes included), unscaled (``scl_slope`` NaN), and holds::

    out = max((v + 1) / 2, 0)   inside the source's foreground (input voxels > 0) covered by the grid
    out = 0                      elsewhere (background, and brain the grid had to crop)

so the model's [-1, 1] range, i.e. the target's 0.5th..99.5th percentile range, becomes [0, 1]. Like the
model's input, the output is not clipped above: the upper percentile is taken over the whole grid, background
included, so the brightest percent or two of the brain (CSF in T2, enhancing tumour in T1ce) lies above 1, and
a clip there would flatten it. Negative values (no intensity of a magnitude image) are set to 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch

from ..errors import InputImageError, ModelFormatError, UsageError
from .volume import ImageSource, Volume, image_on_grid, load_volume, save_image
from .resample import (
    antialias_sigmas,
    foreground_box,
    foreground_world_box,
    gaussian_smooth,
    grid_points,
    is_aligned_at_spacing,
    ras_reorder,
    sample_trilinear,
)

__all__ = ["Preprocessing", "Volume", "ModelSpaceInverse", "load_volume", "to_model_space", "save_image"]

logger = logging.getLogger("mrtranslate.volumes")

_AXES = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))
_SLAB_POINTS = 1 << 21
THICK_SLICE_MM = 3.0  # thicker slices (2D clinical acquisitions) get a warning about through-plane resolution
_COARSE_WARN_RATIO = 2.0  # warn when input voxels are over twice the model spacing along an axis


@dataclass(frozen=True)
class Preprocessing:
    """What a model folder's ``model_index.json`` declares about its input space (defaults: the published ALDM).

    ``spacing_mm`` and ``grid`` are in RAS axis order (R-L, A-P, I-S).
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    grid: tuple[int, int, int] = (144, 192, 144)
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5

    def __post_init__(self) -> None:
        try:
            spacing = tuple(float(s) for s in self.spacing_mm)
            grid = tuple(int(g) for g in self.grid)
            if any(int(g) != float(g) for g in self.grid):
                raise ValueError("grid sizes must be whole numbers")
            lo, hi = float(self.lower_percentile), float(self.upper_percentile)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"invalid preprocessing settings ({exc}): spacing_mm and grid need three numbers") from None
        if len(spacing) != 3 or len(grid) != 3:
            raise UsageError(f"spacing_mm {spacing} and grid {grid} need three values each (R-L, A-P, I-S)")
        if not all(math.isfinite(s) and s > 0 for s in spacing) or min(grid) < 2:
            raise UsageError(f"spacing_mm {spacing} must be positive and grid {grid} at least 2 voxels per axis")
        if not (0.0 <= lo < hi <= 100.0):
            raise UsageError(f"percentiles ({lo}, {hi}) must satisfy 0 <= lower < upper <= 100")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "lower_percentile", lo)
        object.__setattr__(self, "upper_percentile", hi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, floats, ints) with the four fields."""
        return {
            "spacing_mm": list(self.spacing_mm),
            "grid": list(self.grid),
            "lower_percentile": self.lower_percentile,
            "upper_percentile": self.upper_percentile,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Read the four fields from ``d`` (e.g. a whole ``model_index.json``); other keys are ignored, missing ones default."""
        names = ("spacing_mm", "grid", "lower_percentile", "upper_percentile")
        try:
            return cls(**{k: d[k] for k in names if k in d})
        except UsageError as exc:
            raise ModelFormatError(f"model_index.json: {exc}") from None


@dataclass(frozen=True)
class _ExactPlan:
    from_ras: np.ndarray  # nibabel orientation: RAS-reordered array -> input array order
    ras_shape: tuple[int, int, int]
    offset: np.ndarray  # RAS-reordered voxel index of model voxel (0, 0, 0)


@dataclass(frozen=True)
class _ResamplePlan:
    model_from_input: np.ndarray  # 4x4: input voxel index -> model voxel index
    sigmas: np.ndarray  # anti-aliasing of the model output before sampling it at coarser input voxels


class ModelSpaceInverse:
    """Maps a model-space tensor back onto the input's own voxel grid (see the module docstring)."""

    def __init__(self, vol: Volume, foreground: np.ndarray, prep: Preprocessing, grid_affine: np.ndarray,
                 plan: _ExactPlan | _ResamplePlan, intensity_range: tuple[float, float]) -> None:
        self.name = vol.name
        self.shape = vol.shape
        self.affine = vol.affine.copy()
        self.header = vol.header.copy()
        self.grid = prep.grid
        self.grid_affine = grid_affine
        self.intensity_range = intensity_range
        self._foreground = foreground
        self._plan = plan

    @property
    def resampled(self) -> bool:
        """False when the forward pass was exact integer crop/pad (no interpolation)."""
        return isinstance(self._plan, _ResamplePlan)

    @property
    def foreground(self) -> np.ndarray:
        """The source's foreground (voxels > 0) on the input grid, boolean (read-only view)."""
        view = self._foreground.view()
        view.flags.writeable = False
        return view

    def __repr__(self) -> str:
        mode = "resampled" if self.resampled else "exact"
        return f"ModelSpaceInverse(name={self.name!r}, input_shape={self.shape}, grid={self.grid}, {mode})"

    def _grid_array(self, model_out: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(model_out, torch.Tensor):
            arr = model_out.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(model_out, dtype=np.float32)
        while arr.ndim > 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != tuple(self.grid):
            raise UsageError(
                f"model output has shape {tuple(np.shape(model_out))}: expected {self.grid} "
                "(optionally with leading 1s), the grid this inverse was made for"
            )
        if not np.all(np.isfinite(arr)):
            logger.warning("%s: %d non-finite model output values written as 0", self.name or "output",
                           int((~np.isfinite(arr)).sum()))
            arr = np.nan_to_num(arr, nan=-1.0, posinf=-1.0, neginf=-1.0)
        return arr

    def __call__(self, model_out: torch.Tensor | np.ndarray) -> nib.Nifti1Image:
        """The model output ``[*grid]``, ``[1, *grid]`` or ``[1, 1, *grid]`` (about [-1, 1]) as an image on the input grid.

        Values are ``max((v + 1) / 2, 0)`` (not clipped above) inside the source foreground covered by the grid, 0 elsewhere.
        """
        v = self._grid_array(model_out)
        out = np.zeros(self.shape, dtype=np.float32)
        if isinstance(self._plan, _ExactPlan):
            ras = np.zeros(self._plan.ras_shape, dtype=np.float32)
            dst, src = _overlap(self._plan.offset, self.grid, self._plan.ras_shape)
            ras[dst] = _output_intensity(v[src])
            out = np.ascontiguousarray(nib.orientations.apply_orientation(ras, self._plan.from_ras))
            out[~self._foreground] = 0
        else:
            self._sample_back(v, out)
        return image_on_grid(out, self.affine, self.header)

    def _sample_back(self, v: np.ndarray, out: np.ndarray) -> None:
        plan = self._plan
        smoothed = gaussian_smooth(v, plan.sigmas)
        upper = np.asarray(self.grid, dtype=np.float64) - 1.0
        slab = max(1, _SLAB_POINTS // (self.shape[1] * self.shape[2]))
        m, t = plan.model_from_input[:3, :3], plan.model_from_input[:3, 3]
        for start in range(0, self.shape[0], slab):
            i0, i1, i2 = np.nonzero(self._foreground[start : start + slab])
            i0 = i0 + start
            pts = np.stack([i0, i1, i2], axis=1).astype(np.float64) @ m.T + t
            inside = np.all((pts >= -1e-3) & (pts <= upper + 1e-3), axis=1)
            vals = sample_trilinear(smoothed, np.clip(pts[inside], 0.0, upper))
            out[i0[inside], i1[inside], i2[inside]] = _output_intensity(vals)

    def grid_image(self, model_out: torch.Tensor | np.ndarray) -> nib.Nifti1Image:
        """A model-space tensor as a NIfTI image on the model grid (``grid_affine``): it overlays the input in world space."""
        return nib.Nifti1Image(self._grid_array(model_out), self.grid_affine.copy())


def _output_intensity(v: np.ndarray) -> np.ndarray:
    """Model values -> output intensities: ``max((v + 1) / 2, 0)``, float32, not clipped above (module docstring)."""
    return np.maximum((v + np.float32(1)) * np.float32(0.5), np.float32(0))


def _overlap(offset: np.ndarray, grid: tuple[int, ...], shape: tuple[int, ...],
             lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(in_array, in_grid)`` of the voxels shared by an array and a grid placed at ``offset`` in it.

    ``lo``/``hi`` (inclusive) further restrict the array side, e.g. to a foreground box.
    """
    lo = np.zeros(3, dtype=int) if lo is None else lo
    hi = np.asarray(shape) - 1 if hi is None else hi
    a = np.maximum(offset, lo)
    b = np.minimum(offset + np.asarray(grid), hi + 1)
    arr = tuple(slice(int(a[k]), int(max(a[k], b[k]))) for k in range(3))
    grd = tuple(slice(int(a[k] - offset[k]), int(max(a[k], b[k]) - offset[k])) for k in range(3))
    return arr, grd


def _warn_cropped(label: str, cut_mm: np.ndarray, fg_mm: np.ndarray, prep: Preprocessing) -> None:
    """Warn that foreground is cut; ``cut_mm`` is (3, 2): mm cut at the low and high end of each RAS axis."""
    if not np.any(cut_mm > 0.05):
        return
    parts = [
        f"{cut_mm[k].sum():.1f} mm {_AXES[k][0]}-{_AXES[k][1]} ({cut_mm[k, 0]:.1f} {_AXES[k][0]}, "
        f"{cut_mm[k, 1]:.1f} {_AXES[k][1]})"
        for k in range(3) if cut_mm[k].sum() > 0.05
    ]
    size = np.asarray(prep.grid) * np.asarray(prep.spacing_mm)
    logger.warning(
        "%s: foreground (%s mm) is larger than the model grid (%s mm); cropped %s: outputs are 0 there. "
        "If the input is not skull-stripped, skull-strip it first (the model was trained on brains only)",
        label, "x".join(f"{x:.0f}" for x in fg_mm), "x".join(f"{x:.0f}" for x in size), ", ".join(parts),
    )


def _exact_forward(vol: Volume, fg: np.ndarray, prep: Preprocessing,
                   to_ras: np.ndarray, from_ras: np.ndarray, ras_affine: np.ndarray,
                   ras_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, _ExactPlan]:
    """Crop to the foreground box, symmetric zero pad / centre crop to the grid (MONAI's conventions)."""
    data = nib.orientations.apply_orientation(vol.data, to_ras)
    lo, hi = foreground_box(nib.orientations.apply_orientation(fg, to_ras))
    n, g = hi - lo + 1, np.asarray(prep.grid)
    # SpatialPad "symmetric": (g - n) // 2 zeros before. CenterSpatialCrop: start at n // 2 - g // 2.
    offset = np.where(n <= g, lo - (g - n) // 2, lo + n // 2 - g // 2)
    cut_lo = np.maximum(offset - lo, 0)
    cut_hi = np.maximum(hi - (offset + g - 1), 0)
    spacing = np.asarray(prep.spacing_mm)
    _warn_cropped(vol.label, np.stack([cut_lo, cut_hi], axis=1) * spacing[:, None], n * spacing, prep)
    grid = np.zeros(prep.grid, dtype=np.float32)
    arr_sl, grid_sl = _overlap(offset, prep.grid, ras_shape, lo, hi)
    grid[grid_sl] = data[arr_sl]
    shift = np.eye(4)
    shift[:3, 3] = offset
    return grid, ras_affine @ shift, _ExactPlan(from_ras, ras_shape, offset)


def _resampled_forward(vol: Volume, fg: np.ndarray, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray, _ResamplePlan]:
    """Trilinear resampling through world space onto an axis-aligned RAS grid centred on the foreground."""
    spacing, g = np.asarray(prep.spacing_mm), np.asarray(prep.grid)
    wmin, wmax = foreground_world_box(fg, vol.affine)
    centre = (wmin + wmax) / 2.0
    grid_affine = np.diag([*spacing, 1.0])
    grid_affine[:3, 3] = centre - spacing * (g - 1) / 2.0
    input_from_model = np.linalg.inv(vol.affine) @ grid_affine
    cut = np.maximum((wmax - wmin) - spacing * (g - 1), 0.0) / 2.0
    _warn_cropped(vol.label, np.stack([cut, cut], axis=1), wmax - wmin + spacing, prep)

    zooms = np.asarray(vol.spacing)
    directions = np.abs(vol.affine[:3, :3] / zooms)  # unit input axes in world (RAS) coordinates
    model_along_input = np.sqrt(((directions * spacing[:, None]) ** 2).sum(axis=0))
    input_along_model = np.sqrt(((directions * zooms[None, :]) ** 2).sum(axis=1))

    lo, hi = foreground_box(fg)
    src = np.zeros_like(vol.data)  # the foreground box only, as the exact path crops to it
    box = tuple(slice(int(lo[k]), int(hi[k]) + 1) for k in range(3))
    src[box] = np.maximum(vol.data[box], 0)
    src = gaussian_smooth(src, antialias_sigmas(zooms, model_along_input))
    grid = np.empty(prep.grid, dtype=np.float32)
    slab = max(1, _SLAB_POINTS // int(g[1] * g[2]))
    for start in range(0, int(g[0]), slab):
        stop = min(int(g[0]), start + slab)
        grid[start:stop] = sample_trilinear(src, grid_points(input_from_model, prep.grid, start, stop))
    plan = _ResamplePlan(np.linalg.inv(input_from_model), antialias_sigmas(spacing, input_along_model))
    return grid, grid_affine, plan


def warn_thick_slices(label: str, zooms: np.ndarray) -> None:
    """A WARNING when the voxels' longest side (the slice thickness of 2D acquisitions) is over
    :data:`THICK_SLICE_MM`: nothing is refused, but no translation adds the detail missing between slices."""
    k = int(np.argmax(zooms))
    if zooms[k] > THICK_SLICE_MM:
        logger.warning(
            "%s: slices are %.2g mm thick along array axis %d (over %g mm): the output's through-plane "
            "resolution is that of the input (%.2g mm); the translation cannot add detail between slices",
            label, zooms[k], k, THICK_SLICE_MM, zooms[k],
        )


def to_model_space(src: ImageSource, prep: Preprocessing | None = None,
                   name: str | None = None) -> tuple[torch.Tensor, ModelSpaceInverse]:
    """The model-space tensor ``[1, 1, *grid]`` (float32, model intensity scale) of an image, and its inverse.

    ``src`` is anything :func:`load_volume` takes. See the module docstring for every step and for what the
    inverse returns. Raises :class:`~mrtranslate.errors.InputImageError` for unusable inputs.
    """
    prep = prep or Preprocessing()
    vol = load_volume(src, name=name)
    fg = vol.data > 0
    n_fg = int(fg.sum())
    if n_fg == 0:
        raise InputImageError(
            f"{vol.label} has no voxel > 0: mrtranslate expects MR intensities with background 0; "
            "rescale the image to non-negative values"
        )
    n_neg = int((vol.data < 0).sum())
    if n_neg > 0.01 * (n_neg + n_fg):
        logger.warning(
            "%s: %.1f%% of the nonzero voxels are negative and count as background (the foreground is voxels > 0, "
            "as in training); pass an image with background 0 and positive intensities",
            vol.label, 100.0 * n_neg / (n_neg + n_fg),
        )
    zooms = np.asarray(vol.spacing)
    warn_thick_slices(vol.label, zooms)
    directions = np.abs(vol.affine[:3, :3] / zooms)
    model_along_input = np.sqrt(((directions * np.asarray(prep.spacing_mm)[:, None]) ** 2).sum(axis=0))
    for k in np.flatnonzero(zooms > _COARSE_WARN_RATIO * model_along_input):
        logger.warning(
            "%s: voxels are %.2g mm along array axis %d, the model works at %.2g mm: that axis is interpolated "
            "(trilinear) to the model's spacing and the output sampled back onto the input's own grid; expect "
            "less detail across those slices than from a scan acquired at the model's spacing",
            vol.label, zooms[k], k, model_along_input[k],
        )

    to_ras, from_ras, ras_affine, ras_shape = ras_reorder(vol.affine, vol.shape)
    plan: _ExactPlan | _ResamplePlan
    if is_aligned_at_spacing(ras_affine, prep.spacing_mm):
        grid, grid_affine, plan = _exact_forward(vol, fg, prep, to_ras, from_ras, ras_affine, ras_shape)
    else:
        grid, grid_affine, plan = _resampled_forward(vol, fg, prep)

    # Values <= 0 are background: small negative values around a real brain (interpolation ringing) would
    # otherwise set the lower percentile and lift the background above -1. No-op for non-negative inputs.
    np.maximum(grid, 0, out=grid)
    # As MONAI: numpy percentiles of the float32 grid, cast to float32, float32 arithmetic, no clipping.
    p_lo, p_hi = (np.float32(p) for p in np.percentile(grid, [prep.lower_percentile, prep.upper_percentile]))
    if not p_hi > p_lo:
        fraction = 100.0 * float((grid != 0).mean())
        raise InputImageError(
            f"{vol.label}: the {prep.lower_percentile:g}th and {prep.upper_percentile:g}th percentiles on the model grid "
            f"are equal (the foreground fills {fraction:.2f}% of it): too small or too flat to be a brain at "
            f"{'x'.join(f'{s:g}' for s in prep.spacing_mm)} mm; pass a skull-stripped brain MRI"
        )
    scaled = ((grid - p_lo) / (p_hi - p_lo)) * np.float32(2) - np.float32(1)
    inverse = ModelSpaceInverse(vol, fg, prep, grid_affine, plan, (float(p_lo), float(p_hi)))
    return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[None, None], inverse
