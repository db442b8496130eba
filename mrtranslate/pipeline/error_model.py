"""A model's error model: the expected error of a translated voxel, learnt from the model's own errors.

The spread of a few diffusion samples says little about where a translation is wrong (it ranks the voxels
of most pairs barely better than chance, and a pair taken from MS-SPADE alone has none). What does say it is
what the model has got wrong before. For each (source, target) pair the error model is a table of the mean
absolute error that the model made on a set of training subjects, indexed by three things known at
inference, all on the input's grid and inside the input's foreground (voxels > 0):

* ``q``: the output's own intensity, normalised as the metrics normalise images (its 0.5th and 99.5th
  percentiles over the foreground mapped to 0 and 1, clipped): ``Q_BINS`` equal bins;
* ``spread``: the samples' standard deviation in the same units (the output's percentile range is 1):
  quartile bins of the training values (one bin for a pair whose samples all agree);
* ``s``: the source's intensity, normalised the same way over its own foreground: quartile bins.

The error that is tabulated is the one the metrics score: ``|p - t|`` with prediction and real target each
normalised over the brain (``mrtranslate.evaluation.metrics``), counted where the input has signal (a source
that covers only part of the brain, e.g. a FLAIR slab, leaves brain voxels with no prediction: those are
not errors the map could describe). A cell with fewer than ``MIN_VOXELS`` voxels takes the mean of its ``q``
bin over the whole table instead.

``predict`` turns a cell's mean absolute error into the SD of a normal error with that mean
(``mean |e| * sqrt(pi / 2)``), in the output's intensity units (times its percentile range): a map that
ranks the voxels by how wrong they are likely to be, in the units a user reads the output in. It is a
statistical summary of past errors, not a guarantee about this scan.

Stored in a model folder as ``uncertainty.json``. numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError

FILE_NAME = "uncertainty.json"
FORMAT = "mrtranslate-error-table"
FORMAT_VERSION = 1
Q_BINS = 16
MIN_VOXELS = 200
PERCENTILES = (0.5, 99.5)  # as the metrics normalise (evaluation.metrics.PERCENTILES)
QUARTILES = (0.25, 0.5, 0.75)

__all__ = ["FILE_NAME", "ErrorModel", "PairTable", "fit_pair", "scaled", "load_error_model"]


def scaled(volume: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``volume`` with its 0.5th..99.5th percentiles over ``mask`` mapped to [0, 1] and clipped there, with
    the two percentiles (a constant mask gives zeros and a range of 1)."""
    values = np.asarray(volume, dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(values[mask], PERCENTILES))
    width = hi - lo if hi > lo else 1.0
    return np.clip((values - lo) / width, 0.0, 1.0), lo, width


class PairTable:
    """The error table of one (source, target) pair: ``table[q_bin, spread_bin, s_bin]``, mean |error|."""

    def __init__(self, table: np.ndarray, spread_edges: Iterable[float], source_edges: Iterable[float],
                 n_voxels: int = 0, origin: str = "error table"):
        self.spread_edges = np.asarray(list(spread_edges), dtype=np.float64)
        self.source_edges = np.asarray(list(source_edges), dtype=np.float64)
        shape = (Q_BINS, len(self.spread_edges) + 1, len(self.source_edges) + 1)
        table = np.asarray(table, dtype=np.float64)
        if table.size != math.prod(shape) or not np.all(np.isfinite(table)) or np.any(table < 0):
            raise ModelFormatError(f"{origin}: the table must hold {math.prod(shape)} finite values >= 0")
        for name, edges in (("spread_edges", self.spread_edges), ("source_edges", self.source_edges)):
            if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
                raise ModelFormatError(f"{origin}: {name} must be finite and ascending")
        self.table = table.reshape(shape)
        self.n_voxels = int(n_voxels)

    def index(self, q: np.ndarray, spread: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each voxel's cell: (q bin, spread bin, source bin); bin k holds edge k-1 <= value < edge k."""
        return (np.clip((q * Q_BINS).astype(np.int64), 0, Q_BINS - 1),
                np.searchsorted(self.spread_edges, spread, side="right"),
                np.searchsorted(self.source_edges, s, side="right"))

    def cells(self, q: np.ndarray, spread: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The mean absolute error (normalised units) of each voxel's cell."""
        return self.table[self.index(q, spread, s)]

    def to_dict(self) -> dict[str, Any]:
        return {"spread_edges": self.spread_edges.tolist(), "source_edges": self.source_edges.tolist(),
                "table": [round(float(v), 6) for v in self.table.ravel()], "n_voxels": self.n_voxels}


def _features(pred: np.ndarray, source: np.ndarray, spread: np.ndarray, seen: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(q, spread, s) of the voxels of ``seen`` (the input's foreground), and the output's percentile range."""
    q, _, width = scaled(pred, seen)
    s, _, _ = scaled(source, seen)
    return q[seen], np.asarray(spread, dtype=np.float64)[seen] / width, s[seen], width


def fit_pair(cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> PairTable:
    """The table of one pair from ``(prediction, source, sample SD, real target)`` arrays of training cases,
    each on one grid (the input's). The error is the metrics' (each image normalised over the brain = target
    voxels > 0), counted in the brain where the source has signal."""
    qs, sps, ss, errs = [], [], [], []
    for pred, source, spread, target in cases:
        target = np.asarray(target, dtype=np.float64)
        brain, fg = target > 0, np.asarray(source) > 0
        seen = fg & brain
        if not seen.any():
            continue
        q, sp, s, _ = _features(pred, source, spread, fg)
        p_metric, _, _ = scaled(pred, brain)
        t_metric, _, _ = scaled(target, brain)
        keep = seen[fg]
        qs.append(q[keep])
        sps.append(sp[keep])
        ss.append(s[keep])
        errs.append(np.abs(p_metric - t_metric)[seen])
    if not errs:
        raise ValueError("no case with a voxel of brain where the source has signal")
    q, sp, s, err = (np.concatenate(a) for a in (qs, sps, ss, errs))
    spread_edges = np.quantile(sp, QUARTILES) if np.ptp(sp) > 0 else np.array([])
    source_edges = np.quantile(s, QUARTILES)
    spread_edges, source_edges = np.unique(spread_edges), np.unique(source_edges)
    shell = PairTable(np.zeros(Q_BINS * (len(spread_edges) + 1) * (len(source_edges) + 1)), spread_edges,
                      source_edges)
    cell = shell.index(q, sp, s)
    qi = cell[0]
    flat = np.ravel_multi_index(cell, shell.table.shape)
    n = shell.table.size
    sums, counts = np.bincount(flat, err, n), np.bincount(flat, minlength=n)
    q_sums, q_counts = np.bincount(qi, err, Q_BINS), np.bincount(qi, minlength=Q_BINS)
    q_mean = np.where(q_counts > 0, q_sums / np.maximum(q_counts, 1), float(err.mean()))
    fallback = np.broadcast_to(q_mean[:, None, None], shell.table.shape).ravel()
    table = np.where(counts >= MIN_VOXELS, sums / np.maximum(counts, 1), fallback)
    return PairTable(table, spread_edges, source_edges, n_voxels=int(err.size))


class ErrorModel:
    """Per (source, target) pair, the table of the model's past errors (module docstring)."""

    def __init__(self, pairs: Mapping[str, PairTable], fitted_on: Iterable[str] = (),
                 validation: Mapping[str, Any] | None = None):
        self.pairs = dict(pairs)
        self.fitted_on = list(fitted_on)
        #: how the tables ranked errors on validation subjects against the samples' spread, per pair (a record)
        self.validation = dict(validation or {})

    def covers(self, source: str, target: str) -> bool:
        return f"{source}->{target}" in self.pairs

    def predict(self, source_name: str, target_name: str, pred: np.ndarray, source: np.ndarray,
                spread: np.ndarray) -> np.ndarray:
        """The expected-error SD map of one output (module docstring), float32, 0 outside the input's
        foreground (``source`` voxels > 0). ``pred``, ``source``, ``spread``: arrays on one grid."""
        table = self.pairs[f"{source_name}->{target_name}"]
        fg = np.asarray(source) > 0
        out = np.zeros(np.shape(pred), dtype=np.float32)
        if not fg.any():
            return out
        q, sp, s, width = _features(pred, source, spread, fg)
        out[fg] = (table.cells(q, sp, s) * width * math.sqrt(math.pi / 2)).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "q_bins": Q_BINS, "fitted_on": self.fitted_on,
                **({"validation": self.validation} if self.validation else {}),
                "pairs": {k: v.to_dict() for k, v in sorted(self.pairs.items())}}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Any, origin: str = FILE_NAME) -> ErrorModel:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFormatError(f"{origin}: not an mrtranslate error table (format {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION or data.get("q_bins") != Q_BINS:
            raise ModelFormatError(f"{origin}: format version {data.get('format_version')!r} with "
                                   f"{data.get('q_bins')!r} bins is not one this version reads: upgrade mrtranslate")
        pairs = data.get("pairs")
        if not isinstance(pairs, dict):
            raise ModelFormatError(f"{origin}: 'pairs' must map 'source->target' to tables")
        tables = {}
        for key, entry in pairs.items():
            if not isinstance(key, str) or key.count("->") != 1 or not isinstance(entry, dict):
                raise ModelFormatError(f"{origin}: pair {key!r} must be 'source->target' with a table")
            try:
                tables[key] = PairTable(entry["table"], entry["spread_edges"], entry["source_edges"],
                                        entry.get("n_voxels", 0), f"{origin}: {key}")
            except (KeyError, TypeError, ValueError):
                raise ModelFormatError(f"{origin}: pair {key!r} needs table, spread_edges and source_edges") from None
        validation = data.get("validation")
        return cls(tables, data.get("fitted_on") or [], validation if isinstance(validation, dict) else None)


def load_error_model(folder: str | Path | None) -> ErrorModel | None:
    """The error model of a model folder, or None when it has none."""
    if folder is None:
        return None
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path}: cannot be read as JSON ({exc})") from None
    return ErrorModel.from_dict(data, str(path))
