"""Fit a model's output standardisation (``pipeline.standard``): the landmarks of real scans of each target
contrast, as stored (their own grid), averaged over training subjects, written into the model folder's
``model_index.json``.

The landmarks depend only on the real scans, not on the model: the subjects the model was trained on are the
natural set (never its validation or test subjects). Which targets a model standardises is a choice to make on
validation subjects, with ``mrtranslate evaluate`` before and after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import UsageError
from ..imaging.layout import find_subjects
from ..imaging.volume import load_volume
from ..modalities import canonical
from ..pipeline.config import PipelineConfig
from ..pipeline.folder import INDEX_NAME
from ..pipeline.standard import PERCENTILES, OutputStandard, scan_landmarks

__all__ = ["fit_output_standard", "write_output_standard"]


def fit_output_standard(model: str | Path, data: str | Path, targets: Sequence[str],
                        percentiles: Sequence[float] = PERCENTILES,
                        progress: bool = True) -> tuple[OutputStandard, dict[str, list[str]]]:
    """The mean landmarks (``pipeline.standard.scan_landmarks``) of each of ``targets`` over the subjects of
    ``data`` that have it, for ``model`` (a model folder), and the subjects used per target.
    UsageError where a target is not one of the model's or has no scan."""
    config = _index(model)
    names = list(dict.fromkeys(canonical(t) for t in targets))
    if not names:
        raise UsageError("no target to standardise: pass --to with one or more modalities, e.g. --to t1ce flair")
    foreign = [t for t in names if t not in config.modalities]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} is not a modality of {model} ({', '.join(config.modalities)})")
    subjects = find_subjects(data)
    used: dict[str, list[str]] = {t: [s.case for s in subjects if t in s.files] for t in names}
    missing = [t for t in names if not used[t]]
    if missing:
        raise UsageError(f"{data} has no {', '.join(missing)} scan: pass training subjects that have every --to target")
    sums = {t: np.zeros(len(percentiles)) for t in names}
    jobs = [(s, t) for s in subjects for t in names if t in s.files]
    for subject, target in tqdm(jobs, desc="landmarks", unit="scan", disable=not progress, leave=False):
        sums[target] += scan_landmarks(load_volume(subject.files[target]).data, percentiles)
    standard = OutputStandard(percentiles, {t: sums[t] / len(used[t]) for t in names})
    return standard, used


def _index(model: str | Path) -> PipelineConfig:
    path = Path(model) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path} cannot be read: pass an exported model folder (mrtranslate export)") from None
    return PipelineConfig.from_dict(index, origin=str(path))


def write_output_standard(model: str | Path, standard: OutputStandard | None) -> Path:
    """Set (or, with None, remove) the output standardisation in ``model``'s ``model_index.json``."""
    path = Path(model) / INDEX_NAME
    config = _index(model)
    config.output_standard = standard.to_dict() if standard is not None else {}
    config.validate(str(path))
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
