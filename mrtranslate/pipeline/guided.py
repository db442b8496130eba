"""Guided detail transfer: the source's fine structure carried into an output, with locally fitted contrast.

An output decoded on a coarse model grid and resampled onto a fine input grid is smooth where the source
shows edges. Within a small window two tissues meet at most edges, and between two tissues any contrast
mapping is linear: the output there is about ``a * source + b``. A guided filter (He, Sun and Tang, "Guided
image filtering", ECCV 2010) fits ``a`` and ``b`` by least squares in a Gaussian window around every voxel,
averages them over the same window, and returns ``mean(a) * source + mean(b)``: the output's local levels
with the source's local shape. ``eps`` (in the scaled source's units squared) damps the fit where the source
is flat, so there the output is only smoothed by the window.

Windows are masked: only voxels of the output's foreground (``> 0``) enter a fit, so the background and the
skull's absence do not pull the brain's border. Everything runs inside the foreground's box (widened by the
window's radius), which gives the same result as the whole array. Tensors in, tensors out; no weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TRUNCATE", "gaussian_taps", "guided_transfer"]

#: Gaussian windows reach ``TRUNCATE`` standard deviations (as ``scipy.ndimage.gaussian_filter``).
TRUNCATE = 4.0
#: Masked window means divide by the window's foreground weight, at least this.
MIN_WEIGHT = 1e-3


def gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised float32 taps of a Gaussian of ``sigma`` voxels, radius ``int(TRUNCATE * sigma + 0.5)``
    (one tap, 1, when ``sigma`` is 0)."""
    radius = int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else torch.ones(1, dtype=torch.float64)
    return (taps / taps.sum()).float()


def _smooth(stack: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Separable filter of each volume of ``stack`` (``[N, D, H, W]``) with ``taps[axis]``, zeros beyond the array:
    a weighted sum of shifted views along each axis."""
    out = stack
    for axis, t in enumerate(taps, start=1):
        radius = (t.numel() - 1) // 2
        if radius == 0:
            continue
        n = out.shape[axis]
        pad = [0, 0] * (3 - axis) + [radius, radius]
        padded = torch.nn.functional.pad(out, pad)
        weights = t.tolist()
        acc = padded.narrow(axis, 0, n) * weights[0]
        for k in range(1, len(weights)):
            acc.add_(padded.narrow(axis, k, n), alpha=weights[k])
        out = acc
    return out


def window_radius(sigma_mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    """Per axis, the voxels a window of ``sigma_mm`` reaches on a grid of ``spacing`` (mm)."""
    return tuple((gaussian_taps(sigma_mm / float(s)).numel() - 1) // 2 for s in spacing)


@torch.no_grad()
def guided_transfer(source: torch.Tensor, output: torch.Tensor, sigma_mm: float, eps: float,
                    spacing: Sequence[float]) -> torch.Tensor:
    """``output`` (``[D, H, W]``) with ``source``'s (same grid, scaled to about [0, 1]) local structure, fitted in
    Gaussian windows of ``sigma_mm`` on a grid of ``spacing`` (mm per axis); float32, clipped at 0, 0 wherever
    ``output`` is not > 0. See the module docstring."""
    if tuple(source.shape) != tuple(output.shape) or output.dim() != 3 or len(spacing) != 3:
        raise ValueError(f"source {tuple(source.shape)} and output {tuple(output.shape)} must be 3D arrays "
                         "on one grid, with three spacings")
    p = output.detach().to("cpu", torch.float32)
    i = source.detach().to("cpu", torch.float32)
    fg = p > 0
    if not fg.any():
        return p.clone()
    taps = [gaussian_taps(sigma_mm / float(s)) for s in spacing]
    m = fg.float()
    im = i * m
    pm = p * m
    sums = _smooth(torch.stack([m, im, pm, im * p, im * i]), taps)
    weight = sums[0].clamp_min(MIN_WEIGHT)
    mean_i, mean_p, mean_ip, mean_ii = (sums[k] / weight for k in range(1, 5))
    del sums
    a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    del mean_ip, mean_ii, mean_i, mean_p
    coeffs = _smooth(torch.stack([a * m, b * m]), taps) / weight
    return (coeffs[0] * i + coeffs[1]).clamp_min(0) * m
