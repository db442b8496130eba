"""The guided detail transfer (:mod:`mrtranslate.pipeline.guided`): what it computes, against a direct
computation with scipy, and what it is for: a smooth output regains the source's edges with its own contrast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mrtranslate.pipeline.guided import fitted, guided_transfer, window_radius


def _ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64)
    centre = np.array([(n - 1) / 2 for n in shape])[:, None, None, None]
    return np.sqrt(((grid - centre) ** 2).sum(0)) <= radius


def _direct(source: np.ndarray, output: np.ndarray, sigma_mm: float, eps: float, spacing) -> np.ndarray:
    """The masked guided filter written out in float64 with scipy's Gaussian (zeros beyond the array)."""
    m = (output > 0).astype(np.float64)
    sigmas = [sigma_mm / s for s in spacing]

    def mean(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x * m, sigmas, mode="constant") / np.maximum(gaussian_filter(m, sigmas, mode="constant"), 1e-3)

    i, p = source.astype(np.float64), output.astype(np.float64)
    mi, mp = mean(i), mean(p)
    a = (mean(i * p) - mi * mp) / (mean(i * i) - mi * mi + eps)
    b = mp - a * mi
    return (mean(a) * i + mean(b)) * m


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 0.8)])
def test_the_transfer_equals_masked_gaussian_windows_computed_directly(spacing) -> None:
    rng = np.random.default_rng(0)
    shape = (26, 30, 24)
    fg = _ball(shape, 10)
    source = rng.random(shape) * fg
    output = (0.2 + rng.random(shape)) * fg
    s, o = torch.from_numpy(source).float(), torch.from_numpy(output).float()
    np.testing.assert_allclose(fitted(s, o, 1.5, 0.003, spacing).numpy(), _direct(source, output, 1.5, 0.003, spacing),
                               atol=2e-4)
    # the result: the output's own values, in the order of the fitted image
    got = guided_transfer(s, o, 1.5, 0.003, spacing)
    assert torch.equal(torch.sort(got[o > 0]).values, torch.sort(o[o > 0]).values)
    order = torch.argsort(fitted(s, o, 1.5, 0.003, spacing)[o > 0], stable=True)
    assert torch.all(torch.diff(got[o > 0][order]) >= 0)
    # the window reaches 4 standard deviations along each axis, in that axis's voxels
    assert window_radius(1.5, spacing) == tuple(int(4 * 1.5 / s + 0.5) for s in spacing)


def test_an_output_linear_in_the_source_comes_back_unchanged() -> None:
    rng = np.random.default_rng(1)
    shape = (20, 20, 20)
    fg = _ball(shape, 8)
    source = torch.from_numpy(rng.random(shape) * fg).float()
    output = (2.5 - 2.0 * source) * torch.from_numpy(fg)
    got = guided_transfer(source, output, 1.5, 1e-8, (1.0, 1.0, 1.0))
    torch.testing.assert_close(got, output, atol=2e-3, rtol=0)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_a_blurred_output_regains_the_sources_thin_structures_with_its_own_contrast() -> None:
    shape = (32, 24, 24)
    x = torch.arange(32, dtype=torch.float32)[:, None, None].expand(shape)
    y = torch.arange(24, dtype=torch.float32)[None, :, None].expand(shape)
    thin = ((x - 10).abs() < 1.5) | ((y - 12).abs() < 1)  # a slab 3 voxels thick and one 2 voxels thick
    source = torch.where(thin, 0.9, 0.3)
    truth = torch.where(thin, 0.2, 0.8)  # the other contrast: dark where the source is bright
    blurred = torch.from_numpy(gaussian_filter(truth.numpy(), 1.5, mode="nearest")).float()
    got = guided_transfer(source, blurred, 1.5, 0.003, (1.0, 1.0, 1.0))
    # the darkest of the output's values move onto the thin structures: closer to the truth's shape
    assert _corr(got, truth) > _corr(blurred, truth) + 0.03
    assert float(got[thin].mean()) < float(blurred[thin].mean()) - 0.01
    assert torch.equal(torch.sort(got.flatten()).values, torch.sort(blurred.flatten()).values)


def test_zero_outside_the_foreground_never_negative_and_one_grid() -> None:
    rng = np.random.default_rng(2)
    shape = (18, 16, 14)
    output = torch.from_numpy(rng.random(shape)).float()
    output[:5] = 0
    source = torch.from_numpy(rng.random(shape) * 3).float()
    got = guided_transfer(source, output, 2.0, 0.01, (1.0, 1.0, 1.0))
    assert torch.all(got[:5] == 0) and torch.all(got >= 0) and got.shape == output.shape
    assert torch.equal(guided_transfer(source, torch.zeros(shape), 2.0, 0.01, (1.0, 1.0, 1.0)), torch.zeros(shape))
    with pytest.raises(ValueError, match="one grid"):
        guided_transfer(source[:-1], output, 2.0, 0.01, (1.0, 1.0, 1.0))
