"""mrtranslate.metrics against scikit-image / SciPy (independent implementations) and hand values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrtranslate import metrics
from mrtranslate.errors import GridMismatchError, InputImageError, UsageError

SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True)
TOL = 1e-4


def _phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A structured (target, prediction) pair: an ellipsoid 'head' with tissue layers and a lesion,
    zero background; the prediction is a blurred, biased, noisy, rescaled copy."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grid, (0.85, 0.9, 0.8))))
    target = np.where(r < 1.0, 300.0, 0.0)
    target[r < 0.8] = 700.0
    target[r < 0.4] = 450.0
    lesion = (grid[0] - 0.3) ** 2 + (grid[1] + 0.2) ** 2 + grid[2] ** 2 < 0.05
    target[lesion] = 1200.0
    target[r < 1.0] += rng.normal(0.0, 20.0, size=int((r < 1.0).sum()))
    target = np.clip(target, 0.0, None)
    pred = gaussian_filter(target, 1.0) * 0.8 + 15.0 * grid[0] + rng.normal(0.0, 25.0, size=shape)
    return target, pred


def _reference_normalize(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo = np.percentile(volume[mask], 0.5)
    hi = np.percentile(volume[mask], 99.5)
    clipped = np.clip(volume, lo, hi)
    return (clipped - clipped.min()) / (clipped.max() - clipped.min())


def _reference_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, dict[str, float]]:
    """Independent computation: skimage for PSNR and SSIM, plain numpy for NMSE and MAE."""
    p = _reference_normalize(pred, mask)
    t = _reference_normalize(target, mask)
    _, smap = structural_similarity(t, p, **SKIMAGE_SSIM)
    return {
        "psnr": {
            "brain": peak_signal_noise_ratio(t[mask], p[mask], data_range=1.0),
            "volume": peak_signal_noise_ratio(t, p, data_range=1.0),
        },
        "nmse": {
            "brain": np.sum((p[mask] - t[mask]) ** 2) / np.sum(t[mask] ** 2),
            "volume": np.sum((p - t) ** 2) / np.sum(t**2),
        },
        "mae": {"brain": np.mean(np.abs(p[mask] - t[mask])), "volume": np.mean(np.abs(p - t))},
        "ssim": {"brain": smap[mask].mean(), "volume": smap.mean()},
    }


def _random_pair(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + 0.3 * rng.standard_normal(shape), 0.0, 1.0)
    return a, b


# --- the Gaussian filter and the SSIM map ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 13, 14), (1, 4, 12), (3, 7, 20), (16, 5, 2)])
def test_gaussian_filter_matches_scipy_reflect_including_axes_shorter_than_the_window(shape):
    rng = np.random.default_rng(1)
    vols = rng.random((2, *shape))
    taps = metrics._gaussian_taps(1.5, 3.5)
    assert taps.numel() == 11
    ours = metrics._gaussian_filter(torch.from_numpy(vols), taps).numpy()
    for ours_one, vol in zip(ours, vols):
        ref = gaussian_filter(vol, sigma=1.5, truncate=3.5, mode="reflect")
        np.testing.assert_allclose(ours_one, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_map_matches_skimage_full_map(kind):
    if kind == "random":
        a, b = _random_pair((22, 25, 19), seed=2)
    else:
        target, pred = _phantom((24, 26, 22), seed=3)
        mask = target > 0
        a, b = _reference_normalize(target, mask), _reference_normalize(pred, mask)
    mssim, smap = structural_similarity(a, b, **SKIMAGE_SSIM)
    ours = metrics.ssim_map(a, b)
    assert ours.shape == a.shape and ours.dtype == np.float64
    assert np.abs(ours - smap).max() < TOL
    # skimage's scalar is the map's mean without a border of (11 - 1) // 2 = 5 voxels.
    assert abs(ours[5:-5, 5:-5, 5:-5].mean() - mssim) < TOL
    assert ours.min() < 0.99  # the pair differs: the comparison above is not between two constant maps


@pytest.mark.parametrize("box", [(slice(9, 20), slice(7, 15), slice(10, 22)),   # zeros all round
                                 (slice(0, 12), slice(3, 30), slice(25, 31)),   # touching borders
                                 (slice(14, 15), slice(20, 21), slice(2, 3))])  # one voxel
def test_ssim_map_of_volumes_with_zero_surroundings_equals_the_whole_volume_computation_to_the_bit(box):
    rng = np.random.default_rng(6)
    a, b = np.zeros((28, 30, 31)), np.zeros((28, 30, 31))
    a[box] = rng.random(a[box].shape)
    b[box] = rng.random(b[box].shape)
    b[box][0, 0, 0] = 0.0  # a zero inside the support changes nothing
    whole = metrics._ssim_of(a, b, metrics._gaussian_taps(1.5, 3.5), 1.0)
    ours = metrics.ssim_map(a, b)
    assert np.array_equal(ours, whole)
    assert (ours == 1.0).sum() > 0.3 * ours.size and ours.min() < 0.9  # the support is small, and scored
    _, smap = structural_similarity(a, b, **SKIMAGE_SSIM)
    assert np.abs(ours - smap).max() < TOL
    assert np.array_equal(metrics.ssim_map(np.zeros((5, 6, 7)), np.zeros((5, 6, 7))), np.ones((5, 6, 7)))


def test_ssim_map_is_symmetric_and_one_for_identical_volumes():
    a, b = _random_pair((14, 12, 13), seed=4)
    np.testing.assert_allclose(metrics.ssim_map(a, b), metrics.ssim_map(b, a), atol=1e-12)
    np.testing.assert_allclose(metrics.ssim_map(a, a), 1.0, atol=1e-12)


def test_ssim_map_rejects_arrays_that_are_not_3d():
    with pytest.raises(InputImageError, match=r"3D.*\(10, 10\)"):
        metrics.ssim_map(np.zeros((10, 10)), np.zeros((10, 10)))


# --- all metrics of a pair ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_compute_metrics_matches_independent_implementation(kind):
    if kind == "random":
        target, pred = _random_pair((20, 22, 18), seed=5)
        target, pred = 50.0 * target + 1.0, 80.0 * pred  # target > 0 everywhere: the mask is the volume
    else:
        target, pred = _phantom((26, 28, 24), seed=6)
    ours = metrics.compute_metrics(pred, target)
    ref = _reference_metrics(pred, target, target > 0)
    assert list(ours) == ["psnr", "nmse", "mae", "ssim"]
    for name in ref:
        assert list(ours[name]) == ["brain", "volume"]
        for region in ref[name]:
            assert isinstance(ours[name][region], float)
            assert abs(ours[name][region] - ref[name][region]) < TOL, (name, region)


def test_compute_metrics_with_a_given_mask_matches_independent_implementation():
    target, pred = _phantom((24, 24, 24), seed=7)
    mask = np.zeros(target.shape, dtype=np.uint8)
    mask[6:18, 5:20, 8:16] = 3  # any value > 0 counts as brain
    ours = metrics.compute_metrics(pred, target, mask)
    ref = _reference_metrics(pred, target, mask > 0)
    for name in ref:
        for region in ref[name]:
            assert abs(ours[name][region] - ref[name][region]) < TOL, (name, region)
    # the given mask is really used: the target's own foreground gives other brain values
    assert ours["mae"]["brain"] != pytest.approx(metrics.compute_metrics(pred, target)["mae"]["brain"])


def test_compute_metrics_is_invariant_to_a_linear_rescaling_of_the_prediction():
    target, pred = _phantom((20, 20, 20), seed=8)
    mask = target > 0
    a = metrics.compute_metrics(pred, target, mask)
    b = metrics.compute_metrics(3.5 * pred + 1000.0, target, mask)
    for name in a:
        for region in a[name]:
            assert a[name][region] == pytest.approx(b[name][region], rel=1e-9, abs=1e-12)


def test_identical_volumes_give_ssim_one_zero_errors_and_infinite_psnr():
    target, _ = _phantom((18, 20, 16), seed=9)
    result = metrics.compute_metrics(target.copy(), target)
    assert result["psnr"] == {"brain": math.inf, "volume": math.inf}
    assert result["nmse"] == {"brain": 0.0, "volume": 0.0}
    assert result["mae"] == {"brain": 0.0, "volume": 0.0}
    assert result["ssim"]["brain"] == pytest.approx(1.0, abs=1e-12)
    assert result["ssim"]["volume"] == pytest.approx(1.0, abs=1e-12)
    encoded = json.dumps(metrics.jsonable(result), allow_nan=False)
    decoded = json.loads(encoded)
    assert decoded["psnr"] == {"brain": "inf", "volume": "inf"}
    assert float(decoded["psnr"]["brain"]) == math.inf
    assert decoded["ssim"]["brain"] == pytest.approx(1.0, abs=1e-12)


# --- the single metrics, by hand --------------------------------------------------------------------


def test_nmse_mae_psnr_hand_values():
    target = np.array([[[1.0, 2.0], [0.0, 2.0]]])
    pred = np.array([[[2.0, 2.0], [1.0, 0.0]]])
    # differences 1, 0, 1, -2 -> squared 1, 0, 1, 4 (sum 6), absolute 1, 0, 1, 2 (sum 4); sum t^2 = 9
    assert metrics.nmse(pred, target) == pytest.approx(6.0 / 9.0)
    assert metrics.mae(pred, target) == pytest.approx(1.0)
    assert metrics.psnr(pred, target, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / 1.5))
    mask = np.array([[[1, 0], [0, 1]]])  # voxels with differences 1 and -2, t^2 = 1 + 4
    assert metrics.nmse(pred, target, mask) == pytest.approx(5.0 / 5.0)
    assert metrics.mae(pred, target, mask) == pytest.approx(1.5)
    assert metrics.psnr(pred, target, mask) == pytest.approx(10 * math.log10(1.0 / 2.5))


def test_psnr_of_a_constant_offset_and_of_identical_arrays():
    target = np.linspace(0.0, 0.8, 60).reshape(3, 4, 5)
    assert metrics.psnr(target + 0.1, target) == pytest.approx(20.0)
    assert metrics.psnr(target, target) == math.inf
    inside = np.zeros(target.shape, dtype=bool)
    inside[0] = True
    pred = target.copy()
    pred[1:] += 0.5
    assert metrics.psnr(pred, target, inside) == math.inf  # identical inside the region only
    assert math.isfinite(metrics.psnr(pred, target))


def test_nmse_of_a_target_without_energy_is_an_error_not_a_number():
    with pytest.raises(InputImageError, match="NMSE"):
        metrics.nmse(np.ones((2, 2, 2)), np.zeros((2, 2, 2)))


def test_normalize_hand_example():
    volume = np.full((201, 1, 2), 1000.0)
    volume[:, 0, 0] = np.arange(201.0)  # mask voxels 0..200: percentiles 0.5 -> 1.0, 99.5 -> 199.0
    volume[0, 0, 1] = -50.0
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, 0, 0] = True
    out = metrics.normalize(volume, mask)
    expected = (np.clip(volume, 1.0, 199.0) - 1.0) / 198.0
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0, 1] == 0.0 and out[5, 0, 1] == 1.0  # outside the mask: clipped to the mask's range


def test_normalize_maps_a_constant_volume_to_zeros():
    out = metrics.normalize(np.full((3, 3, 3), 7.0), np.ones((3, 3, 3)))
    assert out.dtype == np.float64 and not out.any()


# --- errors ---------------------------------------------------------------------------------------


def test_shape_mismatch_is_an_error_naming_both_shapes():
    with pytest.raises(GridMismatchError, match=r"\(4, 5, 6\).*\(4, 5, 7\)") as info:
        metrics.compute_metrics(np.ones((4, 5, 6)), np.ones((4, 5, 7)))
    assert isinstance(info.value, UsageError)
    for fn in (metrics.psnr, metrics.nmse, metrics.mae, metrics.ssim_map):
        with pytest.raises(GridMismatchError):
            fn(np.ones((4, 5, 6)), np.ones((6, 5, 4)))


def test_mask_of_another_shape_is_an_error():
    target, pred = _phantom((12, 12, 12), seed=10)
    with pytest.raises(GridMismatchError, match=r"mask.*\(12, 12, 11\)"):
        metrics.compute_metrics(pred, target, np.ones((12, 12, 11)))


def test_empty_masks_are_errors():
    target, pred = _phantom((12, 12, 12), seed=11)
    with pytest.raises(InputImageError, match="empty"):
        metrics.compute_metrics(pred, target, np.zeros(target.shape))
    with pytest.raises(InputImageError, match="no voxel > 0"):
        metrics.compute_metrics(pred, np.zeros(target.shape))


def test_target_constant_in_the_mask_is_an_error():
    target = np.zeros((12, 12, 12))
    target[3:9, 3:9, 3:9] = 5.0
    with pytest.raises(InputImageError, match="constant"):
        metrics.compute_metrics(np.random.default_rng(0).random(target.shape), target)


def test_non_finite_values_and_non_3d_arrays_are_errors():
    target, pred = _phantom((12, 12, 12), seed=12)
    pred[0, 0, 0] = np.nan
    with pytest.raises(InputImageError, match="NaN"):
        metrics.compute_metrics(pred, target)
    with pytest.raises(InputImageError, match="3D"):
        metrics.compute_metrics(np.ones((12, 12)), np.ones((12, 12)))


def test_normalize_without_a_mask_uses_every_voxel():
    volume = np.arange(201.0).reshape(201, 1, 1)
    np.testing.assert_allclose(metrics.normalize(volume), (np.clip(volume, 1.0, 199.0) - 1.0) / 198.0, atol=1e-12)
