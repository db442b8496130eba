"""Fit a model's error model (``pipeline.error_model``) from its own predictions on training subjects, and keep
the pairs where it ranks errors better than the samples' spread on validation subjects.

The predictions come from ``mrtranslate evaluate --model MODEL --source all --uncertainty``: on subjects the
model was trained on (never its validation or test subjects) for the fit, on validation subjects for the choice.
Each report must be of this model (same weights and configs) at its default sampling, since the spread of other
sampling settings is not what users get.

The choice, per pair: on every validation report, the mean over its subjects of the Spearman correlation
between the map and the real error (``evaluation.uncertainty.calibration``: in the brain where the source has
signal) must be above 0 and above the samples' spread's (a pair without spread: above 0). A pair that fails
keeps the samples' spread as its map; the record of every pair is kept in the error model (``validation``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..evaluation.evaluate import _saved, model_fingerprint
from ..imaging.layout import find_subjects
from ..imaging.volume import load_volume
from ..pipeline.error_model import ErrorModel, fit_pair

__all__ = ["fit_error_model", "parse_validation"]


def _report_settings(report: Path) -> dict[str, Any]:
    path = report / "summary.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise UsageError(f"{path} is not the summary of an evaluate report: pass the --out folder of "
                         "`mrtranslate evaluate ... --uncertainty`") from None
    if not settings.get("uncertainty"):
        raise UsageError(f"{report} was evaluated without --uncertainty: rerun evaluate with --uncertainty")
    return settings


def parse_validation(values: Sequence[str]) -> list[tuple[str, Path, Path]]:
    """``NAME=DATA=REPORT`` -> (name, data folder, report folder); UsageError for another form."""
    out = []
    for value in values:
        parts = value.split("=")
        if len(parts) != 3 or not all(parts):
            raise UsageError(f"--validation {value!r}: write NAME=DATA=REPORT, e.g. validation_2mm=val2mm/=report/")
        out.append((parts[0], Path(parts[1]), Path(parts[2])))
    return out


class _Report:
    """One evaluate report of the model, checked, with its subjects' images."""

    def __init__(self, model: Path, report: Path, data: Path, defaults: dict[str, Any], strength: float):
        self.report, self.settings = report, _report_settings(report)
        if self.settings.get("model_sha256") != model_fingerprint(model):
            raise UsageError(f"{report} was made with another model than {model}: evaluate this model first")
        used = {k: self.settings.get(k) for k in defaults}
        if used != defaults or float(self.settings.get("strength", -1)) != strength:
            raise UsageError(f"{report} sampled with {used}, not the model's defaults {defaults}: evaluate with "
                             "the defaults (no --steps, --samples, --solver or --strength)")
        self.subjects = {s.case: s for s in find_subjects(data)}
        self.cases = list(self.settings.get("cases") or [])
        missing = [c for c in self.cases if c not in self.subjects]
        if missing or not self.cases:
            raise UsageError(f"case {missing[0] if missing else '(none)'} of {report} is not in {data}: pass the "
                             "data folder that report evaluated")

    def tasks(self) -> list[tuple[str, str]]:
        return [tuple(t.split("->")) for t in self.settings["tasks"]]  # type: ignore[misc]

    def case(self, case: str, source: str, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, source, sample SD, real target) of one case and pair."""
        folder = self.report / "pred" / "aldm" / case
        pred, sd = folder / f"{case}_{target}_from_{source}.nii.gz", folder / f"{case}_{target}_from_{source}_sd.nii.gz"
        if not (pred.is_file() and sd.is_file()):
            raise UsageError(f"{pred.name} or its SD map is missing in {folder}: rerun the evaluate command to "
                             "complete the report")
        files = self.subjects[case].files
        return _saved(pred), load_volume(files[source]).data, _saved(sd), load_volume(files[target]).data


def fit_error_model(model: str | Path, report: str | Path, data: str | Path,
                    validation: Sequence[tuple[str, Path, Path]] = (), *, progress: bool = True) -> ErrorModel:
    """The error model of ``model`` (a model folder) from ``report`` (its evaluate report with uncertainty on the
    training subjects of ``data``), keeping the pairs that ``validation`` ((name, data, report) of validation
    sets) supports (module docstring; none given: every pair). Every report is checked before any image is read."""
    from tqdm.auto import tqdm

    from ..evaluation.uncertainty import calibration
    from ..pipeline.config import PipelineConfig
    from ..pipeline.folder import read_model_json

    model = Path(model)
    if not (model / "model_index.json").is_file():
        raise UsageError(f"{model} is not a model folder (no model_index.json): pass the exported folder")
    config = PipelineConfig.from_dict(read_model_json(model / "model_index.json", str(model / "model_index.json")))
    defaults = {"steps": config.default_steps, "samples": config.default_samples, "solver": config.default_solver,
                "pair_strength": dict(config.pair_strength)}
    strength = float(config.default_strength)
    fit = _Report(model, Path(report), Path(data), defaults, strength)
    checks = [(name, _Report(model, rep, folder, defaults, strength)) for name, folder, rep in validation]
    pairs = {}
    for source, target in tqdm(fit.tasks(), desc="error tables", unit="pair", disable=not progress):
        pairs[f"{source}->{target}"] = fit_pair(fit.case(c, source, target) for c in fit.cases)
    fitted = ErrorModel(pairs, fitted_on=fit.cases)
    if not checks:
        return fitted
    record: dict[str, Any] = {}
    for key in tqdm(list(pairs), desc="validation", unit="pair", disable=not progress):
        source, target = key.split("->")
        entry: dict[str, Any] = {}
        for name, rep in checks:
            if (source, target) not in rep.tasks():
                raise UsageError(f"{rep.report} has no {key} predictions: evaluate it with --source all")
            table, spread = [], []
            for case in rep.cases:
                pred, src, sd, tgt = rep.case(case, source, target)
                mapped = fitted.predict(source, target, pred, src, sd)
                table.append(calibration(pred, tgt, mapped, tgt > 0, src > 0)["spearman"])
                spread.append(calibration(pred, tgt, sd, tgt > 0, src > 0)["spearman"])
            entry[name] = {"subjects": rep.cases, "spearman_table": float(np.mean(table)),
                           "spearman_samples": float(np.mean(spread)) if not any(map(math.isnan, spread)) else None}
        entry["kept"] = all(e["spearman_table"] > max(0.0, e["spearman_samples"] or 0.0)
                            for n, e in entry.items() if n != "kept")
        record[key] = entry
    kept = {k: v for k, v in pairs.items() if record[k]["kept"]}
    return ErrorModel(kept, fitted_on=fit.cases, validation=record)
