"""The written report of an evaluation: per-case CSV, per-task summary statistics, Markdown table and JSON.

Summary statistics are over cases: the mean and the sample standard deviation (``ddof=1``; undefined for
one case). The difference to the lookup-table baseline is that of the means over the same cases.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputWriteError
from ..schedulers.solver import SOLVER_LABELS
from .figures import MODALITY_LABELS
from .metrics import LABEL_REGIONS, METRICS, REGIONS

METRIC_COLUMNS: tuple[str, ...] = tuple(f"{m}_{r}" for m in METRICS for r in REGIONS + LABEL_REGIONS)
CSV_COLUMNS: tuple[str, ...] = ("case", "method", "source", "target", *METRIC_COLUMNS, "seconds", "reused")
TABLE_METRICS: tuple[str, ...] = ("psnr_brain", "nmse_brain", "ssim_brain")
METHOD_LABELS: dict[str, str] = {"aldm": "ALDM", "spade": "MS-SPADE only", "lut": "LUT (1-D)"}
_DIGITS = {"psnr_brain": 2, "nmse_brain": 4, "ssim_brain": 4}

__all__ = ["CSV_COLUMNS", "METHOD_LABELS", "lut_wins", "summarise", "write_csv", "write_json", "write_markdown",
           "json_safe"]


def task_label(source: str, target: str) -> str:
    return f"{MODALITY_LABELS.get(source, source)} → {MODALITY_LABELS.get(target, target)}"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputWriteError(f"could not write {path} ({exc}): check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "inf", "-inf", "nan" (JSON has no infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One line per case, task and method; floats with full precision (``repr``), PSNR inf as ``inf``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    write_text(path, buf.getvalue())


def _stats(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        return mean, math.nan
    return mean, float(arr.std(ddof=1))


def summarise(
    rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]], methods: Sequence[str]
) -> list[dict[str, Any]]:
    """One entry per task and method (in the order given) with n, means, stds and the difference to LUT."""
    entries: list[dict[str, Any]] = []
    for source, target in pairs:
        task_rows = [r for r in rows if r["source"] == source and r["target"] == target]
        lut_rows = {r["case"]: r for r in task_rows if r["method"] == "lut"}
        for method in methods:
            mine = [r for r in task_rows if r["method"] == method]
            if not mine:
                continue
            entry: dict[str, Any] = {
                "task": f"{source}->{target}",
                "source": source,
                "target": target,
                "method": method,
                "n": len(mine),
                "cases": [r["case"] for r in mine],
                "mean": {},
                "std": {},
                "vs_lut": None,
            }
            for col in METRIC_COLUMNS:
                values = [r[col] for r in mine]
                if col.endswith(LABEL_REGIONS):  # only the cases that have a label map
                    values = [v for v in values if not math.isnan(v)]
                    entry.setdefault("n_labels", len(values))
                entry["mean"][col], entry["std"][col] = _stats(values) if values else (math.nan, math.nan)
            paired = [r for r in mine if r["case"] in lut_rows]
            if method != "lut" and paired:
                entry["vs_lut"] = {
                    col: float(np.mean([r[col] for r in paired]) - np.mean([lut_rows[r["case"]][col] for r in paired]))
                    for col in TABLE_METRICS
                }
                entry["vs_lut"]["n"] = len(paired)
            entries.append(entry)
    return entries


def lut_wins(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method compared with the LUT: the tasks where its mean PSNR and SSIM in the brain are both higher,
    those where only one is, and those where neither is (ties count as not higher)."""
    wins: dict[str, dict[str, Any]] = {}
    for e in entries:
        vs = e.get("vs_lut")
        if vs is None:
            continue
        psnr, ssim = vs["psnr_brain"] > 0, vs["ssim_brain"] > 0
        kind = "both" if psnr and ssim else "psnr_only" if psnr else "ssim_only" if ssim else "neither"
        w = wins.setdefault(e["method"], {"n_tasks": 0, "both": [], "psnr_only": [], "ssim_only": [], "neither": []})
        w["n_tasks"] += 1
        w[kind].append(e["task"])
    return wins


def wins_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One Markdown bullet per method: on how many tasks it beats the LUT in both PSNR and SSIM, and where not."""
    lines = []
    for method, w in lut_wins(entries).items():
        n_psnr = len(w["both"]) + len(w["psnr_only"])
        n_ssim = len(w["both"]) + len(w["ssim_only"])
        line = (f"- {METHOD_LABELS.get(method, method)} beats the LUT in both PSNR and SSIM (means) on "
                f"{len(w['both'])} of {w['n_tasks']} tasks (in PSNR on {n_psnr}, in SSIM on {n_ssim})")
        misses = [f"{task_label(*t.split('->'))} ({label})" for key, label in
                  (("psnr_only", "better in PSNR only"), ("ssim_only", "better in SSIM only"), ("neither", "neither"))
                  for t in w[key]]
        lines.append(line + (f"; not on {', '.join(misses)}" if misses else ""))
    return lines


def _cell(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return str(mean)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _delta(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if math.isfinite(value) else str(value)


def markdown_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style table: one row per task and method, mean ± std of PSNR, NMSE and SSIM in the brain."""
    with_lut = any(e["vs_lut"] is not None for e in entries)
    head = ["Task", "Method", "n", "PSNR (dB) ↑", "NMSE ↓", "SSIM ↑"]
    if with_lut:
        head += ["ΔPSNR vs LUT", "ΔNMSE vs LUT", "ΔSSIM vs LUT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
    for e in entries:
        cells = [task_label(e["source"], e["target"]), METHOD_LABELS.get(e["method"], e["method"]), str(e["n"])]
        cells += [_cell(e["mean"][c], e["std"][c], _DIGITS[c]) for c in TABLE_METRICS]
        if with_lut:
            vs = e["vs_lut"] or {}
            cells += [_delta(vs.get(c), _DIGITS[c]) for c in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def region_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """PSNR and SSIM in the tumour (labels > 0) and the healthy brain (brain and not tumour) beside the brain's,
    one row per task and method with a label map (mean ± std over the cases that have one)."""
    head = ["Task", "Method", "n", "PSNR brain", "PSNR tumour", "PSNR healthy", "SSIM brain", "SSIM tumour",
            "SSIM healthy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
    for e in entries:
        if not e.get("n_labels"):
            continue
        cells = [task_label(e["source"], e["target"]), METHOD_LABELS.get(e["method"], e["method"]), str(e["n_labels"])]
        for metric, digits in (("psnr", 2), ("ssim", 4)):
            cells += [_cell(e["mean"][f"{metric}_{r}"], e["std"][f"{metric}_{r}"], digits)
                      for r in ("brain", *LABEL_REGIONS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, entries: Sequence[Mapping[str, Any]], settings: Mapping[str, Any],
                   calibration: str | None = None) -> None:
    """``summary.md``: what was run, how it was measured, the table; the tumour / healthy-brain table where
    subjects have label maps; ``calibration`` (a Markdown table of the SD's calibration) when given."""
    lines = [
        "# Evaluation",
        "",
        f"- data: `{settings['data']}`, {settings['n_cases']} subjects",
        f"- methods: {', '.join(METHOD_LABELS.get(m, m) for m in settings['methods'])}",
    ]
    if settings.get("model") is not None:
        strength, samples = settings.get("strength"), settings.get("samples")
        pairs = settings.get("pair_strength") or {}
        solver = settings.get("solver") or "ddim"
        steps = (f", {settings['steps']} DDIM steps, eta {settings['eta']}" if solver == "ddim"
                 else f", {settings['steps']} {SOLVER_LABELS.get(solver, solver)} steps")
        sampling = (steps +
                    f"{f', strength {strength}' if strength is not None and (strength < 1 or pairs) else ''}"
                    f"{' (' + ', '.join(f'{k}: {v}' for k, v in pairs.items()) + ')' if pairs else ''}"
                    f"{f', mean of {samples} samples' if samples is not None and samples > 1 else ''}, seed {settings['seed']}")
        lines.append(f"- model: `{settings['model']}`" + (sampling if "aldm" in settings["methods"] else ""))
    if settings.get("fit_data"):
        lines.append(
            f"- LUT (1-D): E[target | source intensity], {settings['lut_bins']} bins, fitted on the brain voxels of "
            f"{settings['n_fit_cases']} subjects of `{settings['fit_data']}` (tables in summary.json)"
        )
    lines += [
        f"- metrics: {settings['mask']}; each image clipped to its own 0.5th..99.5th percentiles over the brain and "
        "rescaled to [0, 1]; SSIM 3D Gaussian (sigma 1.5)",
        "- cells: mean ± sample standard deviation over subjects; Δ: difference of the means to the LUT baseline "
        "on the same subjects",
        "",
        markdown_table(entries),
    ]
    wins = wins_lines(entries)
    if wins:
        lines += wins + [""]
    if any(e.get("n_labels") for e in entries):
        lines += ["## Tumour and healthy brain", "",
                  "Regions of the label map: tumour = labels > 0, healthy = brain and not tumour; the same "
                  "normalisation and SSIM map as above, averaged in each region (n: cases with a label map).", "",
                  region_table(entries)]
    if calibration:
        lines += ["## Uncertainty: the SD map against the real error", "",
                  "Inside the brain where the source has signal, on the normalised images: Spearman correlation of "
                  "the voxel SD with |error| "
                  "(mean over cases, and the lowest case), mean |error| in the lowest and highest SD decile and "
                  "their ratio, and RMS error / RMS SD (1: the SD's size matches the error's). Figure: "
                  "figures/uncertainty_calibration.png.", "", calibration]
    write_text(path, "\n".join(lines))
