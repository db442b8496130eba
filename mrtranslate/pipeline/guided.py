"""Guided detail transfer: the source's fine structure carried into an output, with locally fitted contrast.

An output decoded on a coarse model grid and resampled onto a fine input grid is smooth where the source
shows edges. Within a small window two tissues meet at most edges, and between two tissues any contrast
mapping is linear: the output there is about ``a * source + b``. A guided filter (He, Sun and Tang, "Guided
image filtering", ECCV 2010) fits ``a`` and ``b`` by least squares in a Gaussian window around every voxel,
averages them over the same window, and returns ``mean(a) * source + mean(b)``: the output's local levels
with the source's local shape, fine texture (and noise) included. ``eps`` (in the scaled source's units
squared) damps the fit where the source is flat, so there the fitted image follows the output smoothed by
the window.

The fit moves intensities as well as edges: it smooths the brightest and darkest few voxels (vessels,
enhancement) towards their surroundings. So the result keeps the output's own intensities and takes only
their order from the fit: the foreground's voxels, ranked by the fitted image, receive the output's values
in the same rank order. The output's histogram (for a standardised target, that of real scans) is unchanged.

Windows are masked: only voxels of the output's foreground (``> 0``) enter a fit, so the background and the
skull's absence do not pull the brain's border; beyond the arrays counts as background, so the foreground's
box widened by the window's radius gives the same result as the whole array. Tensors in, tensors out; no
weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TRUNCATE", "fitted", "gaussian_taps", "guided_transfer", "window_radius"]

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
    Gaussian windows of ``sigma_mm`` on a grid of ``spacing`` (mm per axis); float32, 0 wherever ``output`` is
    not > 0, and the output's own values (reordered) elsewhere. See the module docstring."""
    p = output.detach().to("cpu", torch.float32)
    fg = p > 0
    if not fg.any():
        return p.clone()
    shaped = fitted(source, output, sigma_mm, eps, spacing)[fg]
    # the output's own intensities, in the fitted order: rank by rank, the foreground's values are the output's
    out = torch.zeros_like(p)
    ranked = torch.empty_like(shaped)
    ranked[torch.argsort(shaped, stable=True)] = torch.sort(p[fg]).values
    out[fg] = ranked
    return out


@torch.no_grad()
def fitted(source: torch.Tensor, output: torch.Tensor, sigma_mm: float, eps: float,
           spacing: Sequence[float]) -> torch.Tensor:
    """The guided filter's image ``mean(a) * source + mean(b)`` (before the output's values are put back), with
    foreground-masked windows; 0 outside the foreground. See :func:`guided_transfer`."""
    if tuple(source.shape) != tuple(output.shape) or output.dim() != 3 or len(spacing) != 3:
        raise ValueError(f"source {tuple(source.shape)} and output {tuple(output.shape)} must be 3D arrays "
                         "on one grid, with three spacings")
    p = output.detach().to("cpu", torch.float32)
    i = source.detach().to("cpu", torch.float32)
    taps = [gaussian_taps(sigma_mm / float(s)) for s in spacing]
    m = (p > 0).float()
    weight = _smooth(m[None], taps)[0].clamp_min(MIN_WEIGHT)

    def mean(x: torch.Tensor) -> torch.Tensor:  # one volume at a time: a few volumes of memory at most
        return _smooth((x * m)[None], taps)[0].div_(weight)

    mean_i, mean_p = mean(i), mean(p)
    a = (mean(i * p) - mean_i * mean_p).div_(mean(i * i) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    del mean_i, mean_p
    a, b = mean(a), mean(b)
    return a.mul_(i).add_(b).mul_(m)
