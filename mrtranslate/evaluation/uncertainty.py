"""How well a per-voxel SD map (the spread across diffusion samples, or a model's expected error,
``pipeline.error_model``) tracks the real error.

For one prediction, its SD map and the real target, inside the brain where the source has signal (voxels of
the brain outside the source's foreground, e.g. beyond a FLAIR slab, have no prediction for a map to rank):

* the error is ``|p - t|`` of the images normalised as the metrics are (each clipped to its own 0.5th and
  99.5th percentiles over the brain and mapped to [0, 1]; :func:`metrics.normalize`); the SD is put in the same
  units by the prediction's own scale (divided by the width of its percentile range);
* ``spearman``: Spearman's rank correlation of SD and error over the brain voxels (0: the SD says nothing about
  where the errors are; 1: it ranks the voxels exactly by error);
* ``deciles``: the brain voxels split by SD rank into ten equal parts, from the lowest SD to the highest, with
  each part's mean SD and mean error; a useful map has the error rising from the first to the last;
* ``rms_ratio``: root-mean-square error over root-mean-square SD: the scale that would make the SD's size match
  the error's (1: already does; above 1: the samples agree more than they are right).

A prediction whose samples are all the same (an SD of 0 in the whole brain, e.g. a pair a model takes from
MS-SPADE alone at strength 0) has no spread to rank by: ``no_spread`` is true, its correlation, deciles and
ratio are left out (NaN / None), and the task is reported as having no spread rather than as a ranking.

Per task, ``summarise_calibration`` averages these over the cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import PERCENTILES, normalize

N_BINS = 10

__all__ = ["N_BINS", "require_scipy", "calibration", "summarise_calibration", "calibration_markdown", "write_calibration_figure"]


def require_scipy() -> None:
    """Refuse, before any work, a calibration run without SciPy (the ``eval`` extra)."""
    from ..errors import UsageError

    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        raise UsageError('--uncertainty measures with SciPy: pip install "mrtranslate[eval]"') from None


def calibration(pred: np.ndarray, target: np.ndarray, sd: np.ndarray, brain: np.ndarray,
                seen: np.ndarray | None = None) -> dict[str, Any]:
    """Spearman correlation of SD and error, mean SD and error per SD decile, and the RMS ratio (module docstring),
    over the voxels of ``brain`` (normalisation too) that are also in ``seen`` (the source's foreground; None: all)."""
    from scipy.stats import spearmanr

    brain = np.asarray(brain) > 0
    region = brain if seen is None else brain & (np.asarray(seen) > 0)
    p_raw = np.asarray(pred, dtype=np.float64)
    lo, hi = np.percentile(p_raw[brain], PERCENTILES)
    scale = float(hi - lo) if hi > lo else 1.0
    err = np.abs(normalize(p_raw, brain) - normalize(target, brain))[region]
    s = np.asarray(sd, dtype=np.float64)[region] / scale
    if not err.size or not np.ptp(s) > 0:
        return {"spearman": math.nan, "decile_sd": None, "decile_error": None,
                "mean_error": float(err.mean()) if err.size else math.nan,
                "mean_sd": float(s.mean()) if s.size else math.nan, "rms_ratio": math.nan,
                "n_voxels": int(region.sum()), "no_spread": True}
    rho = spearmanr(s, err)[0] if np.ptp(err) > 0 else math.nan
    parts = np.array_split(np.argsort(s, kind="stable"), N_BINS)
    rms_sd = float(np.sqrt(np.mean(s**2)))
    return {
        "spearman": float(rho),
        "decile_sd": [float(s[i].mean()) for i in parts],
        "decile_error": [float(err[i].mean()) for i in parts],
        "mean_error": float(err.mean()),
        "mean_sd": float(s.mean()),
        "rms_ratio": float(np.sqrt(np.mean(err**2)) / rms_sd) if rms_sd > 0 else math.nan,
        "n_voxels": int(region.sum()),
        "no_spread": False,
    }


def summarise_calibration(records: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]]
                          ) -> list[dict[str, Any]]:
    """Per task: the mean over cases of each case's Spearman correlation, decile curves and RMS ratio, the
    per-case correlations, and whether the SD ranks voxels better than chance there (every case's correlation
    > 0 and the top decile's mean error above the bottom's)."""
    out = []
    for source, target in pairs:
        mine = [r for r in records if r["source"] == source and r["target"] == target]
        if not mine:
            continue
        if any(r.get("no_spread") for r in mine):  # no ranking to summarise: say so
            out.append({"task": f"{source}->{target}", "source": source, "target": target, "n": len(mine),
                        "cases": [r["case"] for r in mine], "no_spread": True, "spearman": math.nan,
                        "spearman_min": math.nan, "spearman_per_case": [math.nan] * len(mine), "decile_sd": None,
                        "decile_error": None, "top_bottom_ratio": math.nan, "rms_ratio": math.nan,
                        "better_than_chance": False})
            continue
        rho = [r["spearman"] for r in mine]
        err = np.mean([r["decile_error"] for r in mine], axis=0)
        out.append({
            "task": f"{source}->{target}", "source": source, "target": target, "n": len(mine),
            "cases": [r["case"] for r in mine],
            "spearman": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
            "spearman_per_case": [float(v) for v in rho],
            "decile_sd": [float(v) for v in np.mean([r["decile_sd"] for r in mine], axis=0)],
            "decile_error": [float(v) for v in err],
            "top_bottom_ratio": float(err[-1] / err[0]) if err[0] > 0 else math.nan,
            "rms_ratio": float(np.mean([r["rms_ratio"] for r in mine])),
            "better_than_chance": bool(min(rho) > 0 and all(r["decile_error"][-1] > r["decile_error"][0] for r in mine)),
            "no_spread": False,
        })
    return out


def calibration_markdown(entries: Sequence[Mapping[str, Any]],
                         samples: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The table of ``summarise_calibration``: one row per task. With ``samples`` (the samples' spread, when
    ``entries`` are the model's error maps): that table too, after the first."""
    if samples is not None:
        return ("The map `--uncertainty` writes: the model's expected error (its error model), or the spread "
                "across the samples for a task marked (spread):\n\n" + calibration_markdown(entries)
                + "\nThe spread across the samples:\n\n" + calibration_markdown(samples))
    from .report import task_label

    lines = ["| Task | n | Spearman (mean, min) | error, lowest SD decile | error, highest SD decile | ratio | "
             "RMS error / RMS SD |", "|---|--:|--:|--:|--:|--:|--:|"]
    for e in entries:
        if e.get("no_spread"):
            lines.append(f"| {task_label(e['source'], e['target'])} | {e['n']} | no spread: every sample the same "
                         "(e.g. MS-SPADE only, strength 0) | | | | |")
            continue
        label = task_label(e["source"], e["target"]) + (" (spread)" if e.get("map") == "samples" else "")
        lines.append(
            f"| {label} | {e['n']} | {e['spearman']:.3f} ({e['spearman_min']:.3f}) | "
            f"{e['decile_error'][0]:.4f} | {e['decile_error'][-1]:.4f} | {e['top_bottom_ratio']:.2f} | "
            f"{e['rms_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def write_calibration_figure(entries: Sequence[Mapping[str, Any]], path: Path) -> str:
    """Mean error by SD decile, one panel per target, one line per source; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import MODALITY_LABELS

    entries = [e for e in entries if not e.get("no_spread")]  # nothing to rank where the samples agree
    targets = list(dict.fromkeys(e["target"] for e in entries))
    if not targets:
        return ""
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.0), squeeze=False, sharey=True)
    x = np.arange(1, N_BINS + 1)
    for ax, target in zip(axes[0], targets):
        for e in (e for e in entries if e["target"] == target):
            ax.plot(x, e["decile_error"], marker="o", ms=3,
                    label=f"from {MODALITY_LABELS.get(e['source'], e['source'])} (ρ {e['spearman']:.2f})")
        ax.set_title(f"→ {MODALITY_LABELS.get(target, target)}")
        ax.set_xlabel("SD decile (1 = lowest SD)")
        ax.set_xticks(x)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |error| in the brain")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
