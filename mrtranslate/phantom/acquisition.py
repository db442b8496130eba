"""Acquisition effects of the phantom: receive-coil bias field, blur, Rician noise and intensity scaling.

Order, as in a scanner: the object's signal is weighted by the coil sensitivity (bias), seen through the
point-spread function (blur), then complex Gaussian noise is added and the magnitude taken (Rician noise;
Gudbjartsson & Patz, Magn Reson Med 1995;34:910-914). Finally the image is skull-stripped (zero outside the
brain mask) and scaled so that its 99.5th brain percentile is ~1000, as a normalised clinical image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .anatomy import SmoothFieldSampler

SCALE_PERCENTILE = 99.5
SCALE_RANGE = (900.0, 1100.0)  # target of the 99.5th brain percentile, drawn per subject and contrast
MIN_FOREGROUND = np.float32(1e-3)  # brain voxels stay > 0 so that "foreground = voxels > 0" is the brain


@dataclass
class AcquisitionDraw:
    """A contrast's acquisition as drawn: bias strength, blur (mm), SNR and intensity scale target."""

    bias_std: float  # std of the log-bias B-spline nodes (field std ~0.35x this)
    blur_sigma_mm: list[float]  # Gaussian sigma per axis (R-L, A-P, I-S); thick-slice blur on one axis
    snr: float  # 99th brain percentile of the noise-free signal / noise sigma
    scale_target: float  # value the 99.5th brain percentile is scaled to

    def as_dict(self) -> dict:
        return asdict(self)


def draw_acquisition(rng: np.random.Generator, blur: bool) -> AcquisitionDraw:
    """Bias of +-10-30%, optional blur (in-plane sigma <= 0.4 mm, one slice axis <= 1.2 mm), SNR 25-60."""
    bias_std = round(float(rng.uniform(0.15, 0.45)), 4)
    sigma = [round(float(s), 4) for s in rng.uniform(0.0, 0.4, size=3)]
    slice_axis = int(rng.integers(0, 3))
    slice_sigma = round(float(rng.uniform(0.0, 1.2)), 4)
    sigma[slice_axis] = max(sigma[slice_axis], slice_sigma)
    snr = round(float(rng.uniform(25.0, 60.0)), 3)
    target = round(float(rng.uniform(*SCALE_RANGE)), 3)
    return AcquisitionDraw(
        bias_std=bias_std, blur_sigma_mm=sigma if blur else [0.0, 0.0, 0.0], snr=snr, scale_target=target
    )


def bias_field(fields: SmoothFieldSampler, rng: np.random.Generator, draw: AcquisitionDraw) -> np.ndarray:
    """Smooth multiplicative field exp(b), b a B-spline field with nodes of std ``draw.bias_std``."""
    field = fields.sample(rng, draw.bias_std)
    return np.exp(field, out=field)


def apply_psf(image: np.ndarray, sigma_mm: list[float], voxel_mm: float) -> np.ndarray:
    """Gaussian blur of per-axis sigma (mm); axes blurred by under 0.2 voxel are left alone."""
    sigma_vox = [s / voxel_mm if s / voxel_mm >= 0.2 else 0.0 for s in sigma_mm]
    if not any(sigma_vox):
        return image
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma_vox, output=np.float32, mode="constant", truncate=3.0)


def add_rician_noise(
    image: np.ndarray, mask: np.ndarray, snr: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Magnitude of signal plus complex Gaussian noise inside ``mask`` (zero outside); returns it and sigma."""
    signal = image[mask]
    sigma = float(np.percentile(signal, 99.0)) / snr if signal.size else 0.0
    noise = rng.standard_normal((2, signal.size), dtype=np.float32)
    noise *= np.float32(sigma)
    real = signal + noise[0]
    noisy = np.sqrt(real * real + noise[1] * noise[1])
    out = np.zeros_like(image)
    out[mask] = noisy
    return out, sigma


def brain_percentile(image: np.ndarray, mask: np.ndarray) -> float:
    """The intensity scaling reference: the 99.5th percentile of ``image`` in the brain."""
    values = image[mask]
    return float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 0.0


def finish(image: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Scale, keep brain voxels strictly positive and the background exactly zero (float32)."""
    out = image * np.float32(scale)
    np.maximum(out, MIN_FOREGROUND, out=out, where=mask)
    out[~mask] = 0.0
    return out.astype(np.float32, copy=False)
