"""The 1-D intensity lookup-table baseline: E[target intensity | source intensity], one table per task.

What a voxel-wise intensity map can do at best, for comparison with the model. Both images of a subject
are normalised as the metrics normalise them (``metrics.normalize``: clip to the image's own 0.5th..99.5th
percentiles over its brain, voxels > 0, and map that range onto [0, 1]). The source range [0, 1] is cut into
``N_BINS`` equal-width bins; the table holds, per bin, the mean normalised target over every brain voxel
(source > 0) of the fitting subjects whose normalised source falls in it. Bins no voxel fell in take the
value interpolated linearly between the nearest filled bins (the end value beyond the last filled bin).

A prediction normalises the source the same way and interpolates the table linearly between bin centres
(constant beyond the first and last centre); voxels outside the source's brain (source <= 0) are 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DatasetLayoutError, GridMismatchError, InputImageError
from ..imaging.layout import Subject
from .metrics import normalize
from ..imaging.model_space import load_volume

N_BINS = 64

__all__ = ["N_BINS", "IntensityLUT", "LUTFitter", "fit_luts"]


def _centres(bins: int) -> np.ndarray:
    return (np.arange(bins, dtype=np.float64) + 0.5) / bins


def _normalised_brain(volume: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(normalised image, brain mask)`` with brain = voxels > 0."""
    brain = np.asarray(volume) > 0
    if not brain.any():
        raise InputImageError(f"{what} has no voxel > 0, so it has no brain to fit or apply a lookup table on")
    return normalize(volume, brain), brain


def _bin_index(x: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((x * bins).astype(np.int64), bins - 1)


@dataclass
class IntensityLUT:
    """A fitted table for one task: ``values[b]`` = mean normalised target of source bin ``b``.

    ``counts[b]`` is the number of fitting voxels in bin ``b`` (0: the value was interpolated).
    """

    source: str
    target: str
    values: np.ndarray
    counts: np.ndarray

    @property
    def bins(self) -> int:
        return int(self.values.size)

    def predict(self, source: np.ndarray) -> np.ndarray:
        """The table applied to a raw source volume: float32, [0, 1] inside its brain, 0 outside."""
        x, brain = _normalised_brain(source, f"the {self.source} image")
        out = np.zeros(x.shape, dtype=np.float32)
        out[brain] = np.interp(x[brain], _centres(self.bins), self.values)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the table reproduces every prediction exactly (see ``from_dict``)."""
        return {
            "source": self.source,
            "target": self.target,
            "bins": self.bins,
            "values": [float(v) for v in self.values],
            "counts": [int(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntensityLUT:
        return cls(
            source=str(d["source"]),
            target=str(d["target"]),
            values=np.asarray(d["values"], dtype=np.float64),
            counts=np.asarray(d["counts"], dtype=np.int64),
        )


class LUTFitter:
    """Accumulates the per-bin sums of the normalised target over subjects, one task at a time or many."""

    def __init__(self, pairs: Iterable[tuple[str, str]], bins: int = N_BINS):
        self.bins = int(bins)
        self.pairs = list(dict.fromkeys(pairs))
        self._sums = {p: np.zeros(self.bins) for p in self.pairs}
        self._counts = {p: np.zeros(self.bins, dtype=np.int64) for p in self.pairs}

    def add(self, images: Mapping[str, np.ndarray], case: str = "subject") -> None:
        """Add one subject's raw images (by modality, on one grid); tasks missing a modality are left out."""
        norm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in {m for p in self.pairs for m in p if m in images}:
            norm[name] = _normalised_brain(images[name], f"{case}'s {name} image")
        shapes = {name: x.shape for name, (x, _) in norm.items()}
        if len(set(shapes.values())) > 1:
            raise GridMismatchError(f"{case}'s images have different shapes {shapes}: they must share one grid")
        for src, tgt in self.pairs:
            if src not in norm or tgt not in norm:
                continue
            x, brain = norm[src]
            idx = _bin_index(x[brain], self.bins)
            self._sums[(src, tgt)] += np.bincount(idx, weights=norm[tgt][0][brain], minlength=self.bins)
            self._counts[(src, tgt)] += np.bincount(idx, minlength=self.bins)

    def finish(self) -> dict[tuple[str, str], IntensityLUT]:
        """The fitted tables; empty bins filled by interpolation between their filled neighbours."""
        out: dict[tuple[str, str], IntensityLUT] = {}
        centres = _centres(self.bins)
        for pair in self.pairs:
            counts = self._counts[pair]
            filled = counts > 0
            if not filled.any():
                raise DatasetLayoutError(
                    f"no fitting subject has both {pair[0]} and {pair[1]} images: the {pair[0]} -> {pair[1]} "
                    "lookup table cannot be fitted; pass --fit-data with subjects that have both"
                )
            values = np.zeros(self.bins)
            values[filled] = self._sums[pair][filled] / counts[filled]
            values[~filled] = np.interp(centres[~filled], centres[filled], values[filled])
            out[pair] = IntensityLUT(pair[0], pair[1], values, counts.copy())
        return out


def fit_luts(
    subjects: Sequence[Subject], pairs: Iterable[tuple[str, str]], bins: int = N_BINS
) -> dict[tuple[str, str], IntensityLUT]:
    """Fit one table per (source, target) pair on the brain voxels of ``subjects`` (each image read once)."""
    fitter = LUTFitter(pairs, bins)
    needed = {m for p in fitter.pairs for m in p}
    for subject in subjects:
        images = {m: load_volume(path).data for m, path in subject.files.items() if m in needed}
        fitter.add(images, subject.case)
    return fitter.finish()
