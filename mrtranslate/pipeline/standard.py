"""Intensity standardisation of a model's outputs: each output's histogram mapped onto its contrast's.

A synthetic contrast can have the right structure and the wrong histogram: a T1ce whose brain is lifted
towards its brightest voxels, a FLAIR without its bright tail. Histogram standardisation (Nyul & Udupa, 1999;
TorchIO's ``HistogramStandardization``) corrects that with one monotone map per image: the output's own
intensities at a few brain percentiles (the *landmarks*) are moved piecewise linearly onto the landmarks of
real scans of that contrast, averaged over training subjects. The order of the voxels, and so the
structure, is kept; only the intensity scale changes.

A model folder opts in per target in ``model_index.json``::

    "output_standard": {"percentiles": [0.5, 1, ..., 99.5], "landmarks": {"flair": [0.0, ..., 1.0]}}

Landmarks are on the scale where a scan's 0.5th and 99.5th brain percentiles (voxels > 0) are 0 and 1, one
per percentile, non-decreasing; a standardised output is on that scale. Beyond the outer landmarks the map
continues with the slope of its end segments; values below 0 become 0, as everywhere in the outputs.
``mrtranslate train standard`` fits them. numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..modalities import canonical

#: The brain percentiles whose intensities are matched: deciles (as Nyul & Udupa) and the tails.
PERCENTILES: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5)

#: The scale of the landmarks: these brain percentiles of a scan at 0 and 1.
SCALE_PERCENTILES = (0.5, 99.5)

__all__ = ["PERCENTILES", "IntensityMap", "OutputStandard", "apply_map", "scan_landmarks", "standardise"]


def scan_landmarks(volume: np.ndarray, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """The landmarks of one real scan: its brain intensities (voxels > 0) at ``percentiles``, on the scale where
    its 0.5th and 99.5th brain percentiles are 0 and 1."""
    values = np.asarray(volume, dtype=np.float64)
    brain = values[values > 0]
    if brain.size == 0:
        raise ValueError("the scan has no voxel > 0: nothing to take landmarks from")
    lo, hi = np.percentile(brain, SCALE_PERCENTILES)
    width = hi - lo if hi > lo else 1.0
    return (np.percentile(brain, list(percentiles)) - lo) / width


class IntensityMap:
    """A monotone piecewise-linear map: ``own`` (strictly increasing) onto ``ref`` (non-decreasing), linear beyond
    the ends with the end segments' slopes, clipped below at 0."""

    def __init__(self, own: np.ndarray, ref: np.ndarray):
        self.own, self.ref = own, ref

    @classmethod
    def fit(cls, values: np.ndarray, percentiles: Sequence[float], landmarks: Sequence[float]) -> IntensityMap:
        """The map that moves ``values``' own intensities at ``percentiles`` onto ``landmarks``. Where the own
        landmarks coincide (a flat stretch of the histogram), the map steps there instead of dividing by 0."""
        own = np.percentile(np.asarray(values, dtype=np.float64), list(percentiles))
        span = max(float(own[-1] - own[0]), 1e-6)
        own = np.maximum.accumulate(own + np.arange(own.size) * span * 1e-9)  # strictly increasing for np.interp
        return cls(own, np.asarray(landmarks, dtype=np.float64))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        own, ref = self.own, self.ref
        out = np.interp(v, own, ref)
        below, above = v < own[0], v > own[-1]
        out[below] = ref[0] + (v[below] - own[0]) * ((ref[1] - ref[0]) / (own[1] - own[0]))
        out[above] = ref[-1] + (v[above] - own[-1]) * ((ref[-1] - ref[-2]) / (own[-1] - own[-2]))
        return np.maximum(out, 0.0).astype(np.float32)


def standardise(values: np.ndarray, percentiles: Sequence[float], landmarks: Sequence[float]) -> np.ndarray:
    """``values`` (one image's brain voxels) mapped so that their own intensities at ``percentiles`` land on
    ``landmarks`` (``IntensityMap``): monotone non-decreasing, >= 0, float32."""
    v = np.asarray(values)
    if v.size == 0:
        return v.astype(np.float32)
    return IntensityMap.fit(v, percentiles, landmarks)(v)


class OutputStandard:
    """A model's output standardisation: the landmarks of each standardised target contrast."""

    def __init__(self, percentiles: Iterable[float], landmarks: Mapping[str, Iterable[float]],
                 origin: str = "output_standard"):
        self.percentiles = tuple(float(p) for p in percentiles)
        p = np.asarray(self.percentiles)
        if p.size < 2 or not np.all(np.isfinite(p)) or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 100:
            raise ModelFormatError(f"{origin}: percentiles must be 2 or more increasing numbers in [0, 100]")
        self.landmarks: dict[str, tuple[float, ...]] = {}
        for target, values in landmarks.items():
            try:
                name = canonical(str(target))
            except Exception:  # noqa: BLE001 - reported as a format error of the model folder
                raise ModelFormatError(f"{origin}: landmarks of unknown modality {target!r}") from None
            ref = np.asarray(list(values), dtype=np.float64)
            if ref.shape != p.shape or not np.all(np.isfinite(ref)) or np.any(np.diff(ref) < 0):
                raise ModelFormatError(f"{origin}: landmarks of {name} must be {p.size} finite non-decreasing "
                                       "numbers, one per percentile")
            if ref[-1] <= ref[0]:
                raise ModelFormatError(f"{origin}: landmarks of {name} must span a range (last > first)")
            if name in self.landmarks:
                raise ModelFormatError(f"{origin}: landmarks of {name} are given twice")
            self.landmarks[name] = tuple(float(x) for x in ref)

    @classmethod
    def from_dict(cls, d: Any, origin: str = "output_standard") -> OutputStandard | None:
        """None for an empty or absent entry; ModelFormatError for a malformed one."""
        if not d:
            return None
        if not isinstance(d, Mapping) or not isinstance(d.get("landmarks"), Mapping):
            raise ModelFormatError(f"{origin} must be an object with 'percentiles' and 'landmarks' (target: list)")
        return cls(d.get("percentiles", PERCENTILES), d["landmarks"], origin)

    def to_dict(self) -> dict[str, Any]:
        return {"percentiles": list(self.percentiles), "landmarks": {k: list(v) for k, v in self.landmarks.items()}}

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.landmarks)

    def covers(self, target: str) -> bool:
        return target in self.landmarks

    def map_for(self, target: str, image: np.ndarray, foreground: np.ndarray) -> IntensityMap | None:
        """The map that standardises ``image`` (an output on its grid, ``foreground`` its brain) for ``target``;
        None for a target without landmarks or an empty foreground. Apply it to the image's foreground voxels, or
        unchanged to other images of the same output (its diffusion samples)."""
        if target not in self.landmarks:
            return None
        values = np.asarray(image)[np.asarray(foreground, dtype=bool)]
        return IntensityMap.fit(values, self.percentiles, self.landmarks[target]) if values.size else None


def apply_map(mapping: IntensityMap | None, image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """``image`` with its ``foreground`` voxels passed through ``mapping`` (a copy, float32); None: unchanged."""
    if mapping is None:
        return image
    out = np.array(image, dtype=np.float32, copy=True)
    fg = np.asarray(foreground, dtype=bool)
    out[fg] = mapping(out[fg])
    return out
