"""Image-quality metrics of a synthesised volume against its target: PSNR, NMSE, MAE and 3D SSIM.

Each metric is reported over two regions: ``"brain"`` (the voxels of a brain mask) and ``"volume"``
(every voxel of the array). Given a tumour label map (BraTS labels: 0 background, 1 necrosis, 2 oedema,
4 enhancing tumour), two more, as the BraTS missing-MRI synthesis challenge (BraSyn) scores them:
``"tumour"`` (label voxels > 0) and ``"healthy"`` (brain and not tumour); a region without voxels scores
NaN. The normalisation and the SSIM map are the same for every region; a region's SSIM is the mean of the
one map over its voxels.

Intensity convention (that of the BraTS synthesis challenge), applied to prediction and target alike
before any metric: take the 0.5th and 99.5th percentiles of the image's own voxels inside the brain
mask (``np.percentile``, linear interpolation), clip the whole image to that range and rescale it
linearly so that the range becomes [0, 1]. Every metric is therefore computed with a data range of 1.
The brain mask is the one given, or else the target's foreground (raw target voxels > 0).

Definitions, with ``p`` the normalised prediction, ``t`` the normalised target and ``R`` a region:

* PSNR = 10 log10(1 / mean_R((p - t)^2)) in dB; identical images give ``float("inf")``.
* NMSE = sum_R((p - t)^2) / sum_R(t^2).
* MAE = mean_R(|p - t|).
* SSIM (Wang et al. 2004) in 3D with a Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 taps
  along each axis), K1 = 0.01, K2 = 0.03, population (co)variances. The SSIM map is computed on the
  whole normalised volumes, the borders being handled by mirroring the volume about its edge voxels
  (``d c b a | a b c d``, SciPy's ``mode="reflect"``). The brain value is the mean of the map over
  the mask, the volume value its mean over *all* voxels, borders included. This matches
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, full=True)``'s map; note that skimage's own scalar
  crops a 5-voxel border before averaging, which the volume value here does not.

A prediction that is constant inside the mask normalises to zeros and is scored (badly); a target
that is constant there cannot be normalised and raises ``InputImageError``. PSNR of identical images
is infinite; ``jsonable`` writes it as the string ``"inf"`` so that JSON output stays valid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import GridMismatchError, InputImageError

METRICS: tuple[str, ...] = ("psnr", "nmse", "mae", "ssim")
REGIONS: tuple[str, ...] = ("brain", "volume")
LABEL_REGIONS: tuple[str, ...] = ("tumour", "healthy")

PERCENTILES: tuple[float, float] = (0.5, 99.5)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5 -> 11 taps, as in Wang et al. 2004
SSIM_K1 = 0.01
SSIM_K2 = 0.03

__all__ = [
    "LABEL_REGIONS",
    "METRICS",
    "REGIONS",
    "label_regions",
    "compute_metrics",
    "foreground_mask",
    "jsonable",
    "mae",
    "nmse",
    "normalize",
    "psnr",
    "ssim_map",
]


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_float(array: np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise InputImageError(f"{name} contains NaN or infinite values; replace them before computing metrics.")
    return out


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise GridMismatchError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "put both on the same voxel grid before computing metrics."
        )


def _check_3d(array: np.ndarray, name: str) -> None:
    if array.ndim != 3:
        raise InputImageError(f"{name} must be a 3D volume; got an array of shape {tuple(array.shape)}.")


def _region(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """A boolean region (voxels > 0 of ``mask``), or None for the whole array."""
    if mask is None:
        return None
    region = np.asarray(mask) > 0
    if region.shape != shape:
        raise GridMismatchError(
            f"{name} has shape {tuple(region.shape)} but the images have shape {tuple(shape)}; "
            "use a mask on the images' voxel grid."
        )
    if not region.any():
        raise InputImageError(f"{name} is empty (no voxel > 0); pass a mask that covers the brain.")
    return region


def _select(array: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    return array.reshape(-1) if region is None else array[region]


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


def foreground_mask(target: np.ndarray) -> np.ndarray:
    """The default brain mask: the voxels of the (raw, unnormalised) target that are > 0."""
    return np.asarray(target) > 0


def normalize(
    volume: np.ndarray, mask: np.ndarray | None = None, percentiles: tuple[float, float] = PERCENTILES
) -> np.ndarray:
    """Clip ``volume`` to its own percentiles taken over the voxels of ``mask`` (voxels > 0; None: all
    voxels) and map that range linearly onto [0, 1].

    Returns float64. A volume that is constant inside the mask has no intensity range; it maps to
    all zeros (so a blank prediction still gets scored, and scored badly).
    """
    values = _as_float(volume, "volume")
    region = _region(mask, values.shape)
    lo, hi = np.percentile(_select(values, region), percentiles)
    if hi <= lo:
        return np.zeros_like(values)
    return (np.clip(values, lo, hi) - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------------
# Voxel-wise error metrics
# --------------------------------------------------------------------------------------------------


def _pair(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    p = _as_float(pred, "prediction")
    t = _as_float(target, "target")
    _check_same_shape(p, t, "prediction", "target")
    region = _region(mask, p.shape)
    return _select(p, region), _select(t, region)


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over ``mask`` (all voxels if None); inf when identical there."""
    p, t = _pair(pred, target, mask)
    return _psnr_of(float(np.mean((p - t) ** 2)), data_range)


def _psnr_of(mse: float, data_range: float = 1.0) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def nmse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised mean squared error sum((pred - target)^2) / sum(target^2) over ``mask``."""
    p, t = _pair(pred, target, mask)
    energy = float(np.sum(t**2))
    if energy == 0.0:
        raise InputImageError(
            "the target is zero everywhere in the region, so NMSE is undefined; check the target and mask."
        )
    return float(np.sum((p - t) ** 2)) / energy


def mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over ``mask`` (all voxels if None)."""
    p, t = _pair(pred, target, mask)
    return float(np.mean(np.abs(p - t)))


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------


def _gaussian_taps(sigma: float, truncate: float) -> torch.Tensor:
    # Same taps as scipy.ndimage.gaussian_filter (which skimage uses): radius int(truncate*sigma+0.5).
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _mirror_indices(size: int, radius: int) -> torch.Tensor:
    """Indices that pad an axis of ``size`` by ``radius`` on each side with ``d c b a | a b c d``.

    Works for any radius (repeated mirroring when radius > size), as scipy's ``mode="reflect"``.
    """
    idx = np.arange(-radius, size + radius) % (2 * size)
    idx = np.where(idx >= size, 2 * size - 1 - idx, idx)
    return torch.from_numpy(idx)


def _gaussian_filter(stack: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of each volume in ``stack`` (N, X, Y, Z), mirrored borders.

    A weighted sum of shifted views along each axis: on CPU in float64 this is about ten times
    faster than ``conv3d`` with a one-dimensional kernel, and exact to rounding.
    """
    size = taps.numel()
    radius = (size - 1) // 2
    weights = taps.tolist()
    out = stack
    for dim in (1, 2, 3):
        n = out.shape[dim]
        padded = out.index_select(dim, _mirror_indices(n, radius))
        acc = padded.narrow(dim, 0, n) * weights[0]
        for k in range(1, size):
            acc.add_(padded.narrow(dim, k, n), alpha=weights[k])
        out = acc
    return out


def ssim_map(
    pred: np.ndarray,
    target: np.ndarray,
    data_range: float = 1.0,
    sigma: float = SSIM_SIGMA,
) -> np.ndarray:
    """The 3D SSIM map of two volumes (same shape), float64, one value per voxel.

    Gaussian window of ``sigma`` truncated at 3.5 sigma, K1 = 0.01, K2 = 0.03, population
    (co)variances, borders mirrored (see the module docstring).
    """
    p = _as_float(pred, "prediction")
    t = _as_float(target, "target")
    _check_same_shape(p, t, "prediction", "target")
    _check_3d(p, "prediction")
    taps = _gaussian_taps(sigma, SSIM_TRUNCATE)
    # Where the window holds zeros only in both volumes, every local mean and (co)variance is exactly 0 and
    # the map exactly 1. So the filters run on the box of the non-zero voxels widened by the window's radius
    # (the brain of a 1 mm BraTS scan fills under half its array); inside that box each voxel's window and
    # sums are those of the whole volume (a box edge inside the volume mirrors zeros, as the zeros beyond it
    # would be), so the map is the same to the last bit.
    box = _support_box((p != 0) | (t != 0), (taps.numel() - 1) // 2)
    out = np.ones(p.shape, dtype=np.float64)
    if box is not None:
        out[box] = _ssim_of(p[box], t[box], taps, data_range)
    return out


def _support_box(nonzero: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``nonzero``, widened by ``margin`` voxels on each side within the array; None if empty."""
    box = []
    for axis in range(nonzero.ndim):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, nonzero.shape[axis])))
    return tuple(box)


def _ssim_of(p: np.ndarray, t: np.ndarray, taps: torch.Tensor, data_range: float) -> np.ndarray:
    """The SSIM map of two float64 volumes, their borders mirrored."""
    x = torch.from_numpy(np.ascontiguousarray(p))
    y = torch.from_numpy(np.ascontiguousarray(t))
    with torch.no_grad():
        ux, uy, uxx, uyy, uxy = _gaussian_filter(torch.stack([x, y, x * x, y * y, x * y]), taps)
        vx = uxx - ux * ux
        vy = uyy - uy * uy
        vxy = uxy - ux * uy
        c1 = (SSIM_K1 * data_range) ** 2
        c2 = (SSIM_K2 * data_range) ** 2
        num = (2 * ux * uy + c1) * (2 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        return (num / den).numpy()


# --------------------------------------------------------------------------------------------------
# All metrics of one pair
# --------------------------------------------------------------------------------------------------


def label_regions(labels: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """``{"tumour": labels > 0, "healthy": brain and not tumour}`` (boolean arrays on the images' grid)."""
    lab = np.asarray(labels)
    if lab.shape != brain.shape:
        raise GridMismatchError(
            f"the label map has shape {tuple(lab.shape)} but the images have shape {tuple(brain.shape)}; "
            "use the label map of this subject, on the images' voxel grid."
        )
    if not np.all(np.isfinite(lab)):
        raise InputImageError("the label map contains NaN or infinite values; pass an integer label map.")
    tumour = lab > 0
    return {"tumour": tumour, "healthy": brain & ~tumour}


def _scores(p: np.ndarray, t: np.ndarray, ssim: np.ndarray, region: np.ndarray | None) -> dict[str, float]:
    """The four metrics in ``region``, each region's voxels selected once (the same arithmetic as
    :func:`psnr`, :func:`nmse` and :func:`mae`)."""
    if region is not None and not region.any():
        return {name: math.nan for name in METRICS}
    sel_t = _select(t, region)
    diff = _select(p, region) - sel_t
    square = diff**2
    mse = float(np.mean(square))
    energy = float(np.sum(sel_t**2))
    return {
        "psnr": _psnr_of(mse),
        "nmse": float(np.sum(square)) / energy if energy > 0 else math.nan,
        "mae": float(np.mean(np.abs(diff))),
        "ssim": float(ssim.mean() if region is None else ssim[region].mean()),
    }


def compute_metrics(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """PSNR, NMSE, MAE and SSIM of ``pred`` against ``target``, in the brain mask and the whole volume, and with
    ``labels`` (a tumour label map on the same grid) in the tumour and the healthy brain.

    ``pred`` and ``target`` are raw 3D intensity arrays on the same grid; both are normalised as the
    module docstring describes. ``mask``: voxels > 0 form the brain; None uses ``target > 0``.
    Returns ``{"psnr": {"brain": .., "volume": ..}, "nmse": {..}, "mae": {..}, "ssim": {..}}`` (regions
    ``"tumour"`` and ``"healthy"`` too with ``labels``).
    """
    p_raw = _as_float(pred, "prediction")
    t_raw = _as_float(target, "target")
    _check_same_shape(p_raw, t_raw, "prediction", "target")
    _check_3d(t_raw, "target")
    if mask is None:
        brain = foreground_mask(t_raw)
        if not brain.any():
            raise InputImageError("the target has no voxel > 0, so there is no brain to measure; pass --mask.")
    else:
        brain = _region(mask, t_raw.shape)
    regions: dict[str, np.ndarray | None] = {"brain": brain, "volume": None}
    if labels is not None:
        regions.update(label_regions(labels, brain))
    p = normalize(p_raw, brain)
    t = normalize(t_raw, brain)
    if not t[brain].any():  # normalize() maps a target without intensity range to zeros
        raise InputImageError(
            "the target is constant inside the brain mask, so it cannot be normalised; check the target and mask."
        )
    ssim = ssim_map(p, t)
    # every region but the whole volume lies in one box (the brain's, or the tumour's beyond it): selecting
    # there visits the same voxels in the same order, in a fraction of the array
    box = _support_box(np.logical_or.reduce([r for r in regions.values() if r is not None]), 0)
    scores = {name: _scores(p, t, ssim, None) if region is None else _scores(p[box], t[box], ssim[box], region[box])
              for name, region in regions.items()}
    return {m: {name: scores[name][m] for name in regions} for m in METRICS}


def jsonable(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float | str]]:
    """``metrics`` with non-finite numbers as the strings ``"inf"``, ``"-inf"``, ``"nan"``.

    JSON has no infinity; a PSNR of identical images is written as ``"inf"`` (``float("inf")`` reads
    it back) so that the output stays valid JSON for every parser.
    """
    return {
        name: {region: value if math.isfinite(value) else str(float(value)) for region, value in regions.items()}
        for name, regions in metrics.items()
    }
