"""Evaluate a model on a dataset folder: synthesise, measure, tabulate and draw.

>>> evaluate("data/test", "my-model/", sources="t1", targets=["t2", "flair"], methods=["aldm", "spade"],
...          out="report/", baseline="lut", fit_data="data/train")          # doctest: +SKIP

For every subject of ``data`` (BraTS, BIDS: see ``layout``) and every task (source -> target), each method
predicts the target from the source:

* ``aldm``: the full model (MS-SPADE, then DDIM sampling), every target of one source in one batched pass;
* ``spade``: the MS-SPADE target-like latent decoded without diffusion (``Translator.to_spade_only``), which
  shows what the diffusion stage adds;
* ``lut`` (``baseline="lut"``): the 1-D intensity lookup table E[target | source intensity] fitted on the
  subjects of ``fit_data`` (``evaluation.lut``).

Metrics (``metrics.compute_metrics``) in the brain = target voxels > 0 (the metrics module's convention,
as in the BraTS synthesis challenge) and over the whole volume. The report folder holds::

    pred/<method>/<case>/<case>_<target>_from_<source>.nii.gz   model predictions, on the source's grid
    pred/<method>/<case>/<case>_from_<source>.json              what made them (reuse record)
    pred/aldm/<case>/<case>_<target>_from_<source>_sd.nii.gz    with ``uncertainty``: SD across samples
    cases.csv        one line per case, task and method
    summary.md       one row per task and method: mean ± std of PSNR, NMSE, SSIM (brain), Δ to the LUT;
                     per method, the tasks where it beats the LUT in both PSNR and SSIM
    summary.json     settings, per-task statistics, those wins (vs_lut_wins), the fitted lookup tables,
                     figure panel boxes
    figures/<source>_to_<target>.png
    figures/uncertainty_calibration.png                         with ``uncertainty``: error by SD decile

Resumable: model predictions are reused when their record says they were made from the same source file
(SHA-256) by the same model weights (SHA-256 of the model folder's files), solver, steps, eta, strength, samples and seed, in a batch
with the same targets (the batch decides the noise each target gets, so only then is a reused file exactly
what a fresh run would write).
Anything else is recomputed and overwritten. Lookup-table predictions are cheap and never written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import DatasetLayoutError, GridMismatchError, UsageError
from .figures import FigureData, require_matplotlib, write_figure
from .lut import N_BINS, IntensityLUT, fit_luts
from .report import (
    METHOD_LABELS,
    json_safe,
    lut_wins,
    summarise,
    write_csv,
    write_json,
    write_markdown,
)
from ..imaging.layout import Subject, find_subjects
from ..pipeline.error_model import FILE_NAME as ERROR_MODEL_FILE
from .metrics import LABEL_REGIONS, METRICS, REGIONS, compute_metrics
from .uncertainty import (
    calibration,
    calibration_markdown,
    require_scipy,
    summarise_calibration,
    write_calibration_figure,
)
from ..modalities import MODALITIES, canonical_list
from ..pipeline.options import SamplingOptions
from ..provenance import hash_file, sha256_file
from ..imaging.model_space import Volume, load_volume, save_image

logger = logging.getLogger(__name__)

MODEL_METHODS: tuple[str, ...] = ("aldm", "spade")
BASELINES: tuple[str, ...] = ("lut",)
MASK_RULE = "brain = target voxels > 0"
AFFINE_ATOL = 1e-4

__all__ = ["MODEL_METHODS", "BASELINES", "evaluate", "task_pairs", "model_fingerprint"]


def task_pairs(sources: str | Sequence[str], targets: Sequence[str] | None, modalities: Sequence[str] = MODALITIES
               ) -> list[tuple[str, str]]:
    """The (source, target) tasks: ``sources`` one or more names, or ``"all"``; ``targets`` None: all modalities.

    With ``"all"`` (or several sources) pairs of a modality with itself are left out; a single source that is
    also a target is an error.
    """
    every = list(modalities)
    src_all = isinstance(sources, str) and sources.strip().lower() == "all"
    srcs = every if src_all else canonical_list([sources] if isinstance(sources, str) else sources)
    tgts = every if targets is None or len(targets) == 0 else canonical_list(targets)
    for name in srcs + tgts:
        if name not in every:
            raise UsageError(f"modality {name!r} is not one of this model's ({', '.join(every)})")
    if len(srcs) == 1 and srcs[0] in tgts and targets:
        raise UsageError(f"target {srcs[0]!r} is the source modality: choose other targets (or --source all)")
    pairs = [(s, t) for s in srcs for t in tgts if s != t]
    if not pairs:
        raise UsageError("no task to evaluate: give a source and at least one other target modality")
    return pairs


def model_fingerprint(folder: Path) -> str:
    """SHA-256 over the model folder's JSON and safetensors files (names and contents), in sorted order: what
    its predictions depend on. The error model (``uncertainty.json``) is left out: it changes no prediction,
    and it is fitted on predictions of the very folder it is then added to."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")
                       and p.relative_to(folder).as_posix() != ERROR_MODEL_FILE):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        hash_file(path, digest)
    return digest.hexdigest()


def _check_methods(methods: Sequence[str], baseline: str | None, fit_data: Any) -> list[str]:
    chosen = list(dict.fromkeys(str(m).strip().lower() for m in methods))
    for m in chosen:
        if m not in MODEL_METHODS:
            raise UsageError(f"unknown method {m!r}: use {' or '.join(MODEL_METHODS)} (and --baseline lut for the table)")
    if baseline is not None and str(baseline).lower() not in BASELINES:
        raise UsageError(f"unknown baseline {baseline!r}: the only baseline is 'lut'")
    if baseline is not None and fit_data is None:
        raise UsageError("--baseline lut needs --fit-data DIR: the subjects to fit the lookup tables on (e.g. training data)")
    if baseline is None and fit_data is not None:
        raise UsageError("--fit-data is only used by --baseline lut: add --baseline lut or leave --fit-data out")
    if not chosen and baseline is None:
        raise UsageError("nothing to evaluate: give at least one --method (aldm, spade) or --baseline lut")
    return chosen


def _same_grid(a: Volume, b: Volume, path_a: Path, path_b: Path) -> None:
    if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=AFFINE_ATOL):
        raise GridMismatchError(
            f"{path_a} (shape {a.shape}) and {path_b} (shape {b.shape}) are not on one voxel grid (affines "
            f"{a.affine[:3].round(4).tolist()} vs {b.affine[:3].round(4).tolist()}): co-register the subject's images"
        )


def _saved(path: Path) -> np.ndarray:
    """A prediction or SD map this report saved, as written (an SD map may be 0 everywhere: not an input image)."""
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetLayoutError(f"cannot read {path} ({exc}): delete it and run again to recompute it") from None


def _label_map(path: Path, ref: Volume, ref_path: Path) -> np.ndarray:
    """A subject's label map (read as is: it may hold no tumour), checked to be on the images' grid."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetLayoutError(f"cannot read the label map {path} ({exc}): replace or remove it") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=AFFINE_ATOL):
        raise GridMismatchError(
            f"the label map {path} (shape {data.shape}) is not on the grid of {ref_path} (shape {ref.shape}): "
            "use the subject's own label map, on its images' grid"
        )
    return data


class _ModelRunner:
    """Model predictions of one (case, source) for the model methods: reused from disk or computed and saved.

    With ``uncertainty``, ALDM's predictions come with their per-voxel SD across samples (``..._sd.nii.gz``
    beside each prediction)."""

    def __init__(self, translator: Any, methods: Sequence[str], keys: dict[str, dict[str, Any]], out: Path,
                 inputs: Sequence[Path], uncertainty: bool = False):
        self.translator, self.methods, self.keys, self.out, self.inputs = translator, methods, keys, out, inputs
        self.uncertainty = uncertainty

    def paths(self, method: str, case: str, source: str, targets: Sequence[str]) -> tuple[Path, dict[str, Path]]:
        folder = self.out / "pred" / method / case
        files = {t: folder / f"{case}_{t}_from_{source}.nii.gz" for t in targets}
        return folder / f"{case}_from_{source}.json", files

    @staticmethod
    def sd_paths(files: dict[str, Path]) -> dict[str, Path]:
        return {t: p.with_name(p.name[: -len(".nii.gz")] + "_sd.nii.gz") for t, p in files.items()}

    def _reusable(self, record: Path, files: dict[str, Path], key: dict[str, Any]) -> float | None:
        """The recorded seconds when ``record`` matches ``key`` and every file is there; else None."""
        if not record.is_file() or not all(p.is_file() for p in files.values()):
            return None
        try:
            made = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if made.get("key") != key or made.get("targets") != list(files):
            logger.info("recomputing %s: its predictions were made with other settings or targets", record.parent)
            return None
        return float(made.get("seconds", float("nan")))

    def run(self, subject: Subject, source: str, targets: Sequence[str]
            ) -> dict[str, tuple[dict[str, np.ndarray], float, bool, dict[str, np.ndarray]]]:
        """method -> (target -> prediction array, seconds per target, reused, target -> SD array (ALDM with
        uncertainty; else empty))."""
        results: dict[str, tuple[dict[str, np.ndarray], float, bool, dict[str, np.ndarray]]] = {}
        bound = None
        source_sha256 = sha256_file(subject.files[source])
        for method in self.methods:
            record, files = self.paths(method, subject.case, source, targets)
            spread = self.uncertainty and method == "aldm"
            sd_files = self.sd_paths(files) if spread else {}
            key = {**self.keys[method], "source_sha256": source_sha256}
            seconds = self._reusable(record, files, key)
            if seconds is not None and all(p.is_file() for p in sd_files.values()):
                preds = {t: _saved(p) for t, p in files.items()}
                results[method] = (preds, seconds, True, {t: _saved(p) for t, p in sd_files.items()})
                continue
            record.unlink(missing_ok=True)  # until the new predictions are all written
            if bound is None:
                bound = self.translator(subject.files[source], source=source)
            start = time.perf_counter()
            sds: dict[str, Any] = {}
            if spread:
                out, sd = bound.to(*targets, uncertainty="samples")  # the error model maps from it (_Run)
                sds = sd if isinstance(sd, dict) else {targets[0]: sd}
            else:
                out = bound.to(*targets) if method == "aldm" else bound.to_spade_only(*targets)
            seconds = (time.perf_counter() - start) / len(targets)
            images = out if isinstance(out, dict) else {targets[0]: out}
            for t, img in sds.items():
                save_image(img, sd_files[t], overwrite=True, inputs=self.inputs)
            for t, img in images.items():
                save_image(img, files[t], overwrite=True, inputs=self.inputs)
            write_json(record, {"key": key, "targets": list(targets), "seconds": seconds,
                                "mrtranslate_version": __version__, "source_file": str(subject.files[source])})
            results[method] = ({t: np.asarray(img.dataobj, dtype=np.float32) for t, img in images.items()},
                               seconds, False, {t: np.asarray(img.dataobj, dtype=np.float32) for t, img in sds.items()})
        return results


def _row(case: str, method: str, source: str, target: str, metrics: dict[str, dict[str, float]],
         seconds: float, reused: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case, "method": method, "source": source, "target": target}
    row.update({f"{m}_{r}": metrics[m].get(r, float("nan")) for m in METRICS for r in REGIONS + LABEL_REGIONS})
    row.update({"seconds": seconds, "reused": int(reused)})
    return row


@dataclass
class _Run:
    """The per-subject work of one evaluation, and what it collects (rows, skipped tasks, figure records)."""

    pairs: list[tuple[str, str]]
    methods: list[str]
    runner: _ModelRunner | None
    luts: dict[tuple[str, str], IntensityLUT]
    out: Path
    figures: bool
    figure_case: str | None
    error_model: Any = None  # the model's ErrorModel: its maps are scored beside the samples' spread
    rows: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    drawn: dict[str, dict[str, Any]] = field(default_factory=dict)

    def subject(self, subject: Subject) -> None:
        """Predict every task of ``subject`` with every method, measure, and draw the figures it is chosen for."""
        targets_of: dict[str, list[str]] = {}
        for s, t in self.pairs:
            if s in subject.files and t in subject.files:
                targets_of.setdefault(s, []).append(t)
            else:
                self.skipped.append({"case": subject.case, "task": f"{s}->{t}", "reason": "modality missing"})
        volumes: dict[str, Volume] = {}

        def volume(name: str) -> Volume:  # each image read once per subject
            if name not in volumes:
                volumes[name] = load_volume(subject.files[name])
            return volumes[name]

        labels = None
        if subject.seg is not None and targets_of:
            first = next(iter(targets_of))
            labels = _label_map(subject.seg, volume(first), subject.files[first])
        for source, tgts in targets_of.items():
            for t in tgts:
                _same_grid(volume(source), volume(t), subject.files[source], subject.files[t])
            model_preds = self.runner.run(subject, source, tgts) if self.runner is not None else {}
            seen = volume(source).data > 0  # where the source has signal: what an uncertainty map can describe
            for t in tgts:
                target = volume(t).data
                preds = {m: (arrays[t], sec, reused) for m, (arrays, sec, reused, _) in model_preds.items()}
                sds = model_preds["aldm"][3] if "aldm" in model_preds else {}
                if t in sds:
                    cal = calibration(preds["aldm"][0], target, sds[t], target > 0, seen)
                    self.calibration.append({"case": subject.case, "source": source, "target": t, "kind": "samples",
                                             **cal})
                    if self.error_model is not None and self.error_model.covers(source, t):
                        mapped = self.error_model.predict(source, t, preds["aldm"][0], volume(source).data, sds[t])
                        cal = calibration(preds["aldm"][0], target, mapped, target > 0, seen)
                        self.calibration.append({"case": subject.case, "source": source, "target": t,
                                                 "kind": "calibrated", **cal})
                if (source, t) in self.luts:
                    start = time.perf_counter()
                    lut_pred = self.luts[(source, t)].predict(volume(source).data)
                    preds["lut"] = (lut_pred, time.perf_counter() - start, False)
                for method in self.methods:
                    pred, sec, reused = preds[method]
                    metrics = compute_metrics(pred, target, mask=target > 0, labels=labels)
                    self.rows.append(_row(subject.case, method, source, t, metrics, sec, reused))
                task = f"{source}_to_{t}"
                chosen = subject.case == self.figure_case if self.figure_case else task not in self.drawn
                if self.figures and chosen:
                    fig = FigureData(source, t, subject.case, volume(source).data, target, volume(source).affine,
                                     {m: preds[m][0] for m in self.methods})
                    names = {m: METHOD_LABELS[m] for m in self.methods}
                    self.drawn[task] = write_figure(fig, names, self.out / "figures" / f"{task}.png")


def evaluate(
    data: str | Path,
    model: str | Path | None = None,
    sources: str | Sequence[str] = "t1",
    targets: Sequence[str] | None = None,
    methods: Sequence[str] = ("aldm",),
    out: str | Path = "evaluation",
    cases: int | None = None,
    baseline: str | None = None,
    fit_data: str | Path | None = None,
    progress: bool = True,
    *,
    sampling: SamplingOptions | None = None,
    device: str | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    figures: bool = True,
    figure_case: str | None = None,
    uncertainty: bool = False,
) -> dict[str, Any]:
    """Evaluate ``methods`` (and the ``baseline``) on the first ``cases`` subjects of ``data``; write the report
    to ``out`` (see the module docstring) and return what ``summary.json`` holds.

    ``sources``: a modality, several, or ``"all"`` (every ordered pair of distinct modalities with
    ``targets=None``); ``targets``: None for every other modality. ``figure_case``: the subject drawn in the
    figures (default: the first subject that has the task's images). ``sampling``: over the model's defaults,
    seed 0 unless it names one. ``uncertainty``: also keep ALDM's per-voxel SD across samples (2 or more) and
    measure how it tracks the error (:mod:`.uncertainty`): a table in summary.md, ``calibration`` in
    summary.json, ``figures/uncertainty_calibration.png``. Subjects with a label map (``seg``) are also scored
    in the tumour and the healthy brain.
    """
    sampling = sampling or SamplingOptions()
    seed = 0 if sampling.seed is None else sampling.seed
    chosen = _check_methods(methods, baseline, fit_data)
    if uncertainty and "aldm" not in chosen:
        raise UsageError("uncertainty is the spread of ALDM's samples: add --method aldm, or leave out --uncertainty")
    if uncertainty and sampling.samples == 1:
        raise UsageError("uncertainty needs 2 or more samples per target: pass --samples 3 or leave out --uncertainty")
    if uncertainty:
        require_scipy()
    if cases is not None and (isinstance(cases, bool) or int(cases) < 1):
        raise UsageError(f"--cases must be a positive number of subjects, got {cases}")
    task_pairs(sources, targets)  # names checked before any work; again below with the model's modalities
    if figures:
        require_matplotlib()
    out = Path(out)
    subjects = find_subjects(data)[: int(cases) if cases is not None else None]
    if figure_case is not None and figure_case not in {s.case for s in subjects}:
        raise UsageError(f"figure case {figure_case!r} is not among the evaluated subjects of {data}: "
                         f"use one of {', '.join(s.case for s in subjects[:5])}{', ...' if len(subjects) > 5 else ''}")

    translator = None
    keys: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {"data": str(data), "model": None, "steps": None, "eta": None, "strength": None,
                                "samples": None, "seed": seed}
    modalities: Sequence[str] = MODALITIES
    if chosen:
        from ..translator import Translator

        translator = Translator.from_pretrained(
            model, revision=revision, local_files_only=local_files_only, device=device, dtype=dtype,
            sampling=dataclasses.replace(sampling, seed=seed), progress=progress,
        )
        if "aldm" in chosen and translator.pipeline.unet is None:
            raise UsageError("this model has no diffusion UNet (first stage only): evaluate it with --method spade")
        if uncertainty:
            translator.check_uncertainty()
        modalities = translator.modalities
        info = translator.run_record([])
        fingerprint = model_fingerprint(translator.resolved.path) if translator.resolved else None
        keys = {"aldm": {"method": "aldm", "model_sha256": fingerprint, "steps": info["steps"], "eta": info["eta"],
                         "strength": info["strength"], "seed": seed},
                "spade": {"method": "spade", "model_sha256": fingerprint}}
        if info["samples"] > 1:  # (absent for one sample, so that records written before the option still match)
            keys["aldm"]["samples"] = info["samples"]
        if info["solver"] != "ddim":  # (absent for DDIM, likewise)
            keys["aldm"]["solver"] = info["solver"]
        pair_strength = translator.pipeline.config.pair_strength if sampling.strength is None else {}
        if pair_strength:  # the model's per-pair strengths apply (absent otherwise, as for samples)
            keys["aldm"]["pair_strength"] = dict(pair_strength)
        settings.update(model=info["model"], model_revision=info["model_revision"], model_sha256=fingerprint,
                        steps=info["steps"], eta=info["eta"], strength=info["strength"], samples=info["samples"],
                        solver=info["solver"],
                        pair_strength=dict(pair_strength),
                        device=info["device"],
                        precision=info["precision"])
    pairs = task_pairs(sources, targets, modalities)
    all_methods = chosen + (["lut"] if baseline is not None else [])

    luts: dict[tuple[str, str], IntensityLUT] = {}
    if baseline is not None:
        fit_subjects = find_subjects(fit_data)
        overlap = sorted({s.case for s in fit_subjects} & {s.case for s in subjects})
        if overlap:
            logger.warning("the lookup tables are fitted on %d evaluated subjects too (e.g. %s): the baseline is "
                           "then optimistic", len(overlap), overlap[0])
        luts = fit_luts(fit_subjects, pairs)
        settings.update(fit_data=str(fit_data), n_fit_cases=len(fit_subjects), fit_cases=[s.case for s in fit_subjects])
    settings.update(methods=all_methods, tasks=[f"{s}->{t}" for s, t in pairs], mask=MASK_RULE, lut_bins=N_BINS,
                    mrtranslate_version=__version__, n_cases=len(subjects), cases=[s.case for s in subjects])

    inputs = [p for s in subjects for p in s.files.values()]
    runner = _ModelRunner(translator, chosen, keys, out, inputs, uncertainty) if translator is not None else None
    run = _Run(pairs, all_methods, runner, luts, out, figures, figure_case,
               error_model=getattr(translator, "error_model", None) if uncertainty else None)
    for subject in tqdm(subjects, desc="evaluate", unit="case", disable=not progress):
        run.subject(subject)
    rows, skipped, drawn = run.rows, run.skipped, run.drawn
    if not rows:
        raise DatasetLayoutError(f"no subject of {data} has the images of any task ({', '.join(settings['tasks'])})")

    entries = summarise(rows, pairs, all_methods)
    settings["uncertainty"] = uncertainty
    settings["label_cases"] = [s.case for s in subjects if s.seg is not None]
    # the map a user gets (the error model's where the model has one), and the samples' spread beside it
    spread = summarise_calibration([r for r in run.calibration if r["kind"] == "samples"], pairs)
    mapped = summarise_calibration([r for r in run.calibration if r["kind"] == "calibrated"], pairs)
    by_task = {e["task"]: {**e, "map": "calibrated"} for e in mapped}
    calib = [by_task.get(e["task"], {**e, "map": "samples"}) for e in spread] if mapped else spread
    if calib and figures:
        figure = write_calibration_figure(calib, out / "figures" / "uncertainty_calibration.png")
        if figure:  # none when no pair has a spread
            drawn["uncertainty_calibration"] = figure
        if mapped:
            figure = write_calibration_figure(spread, out / "figures" / "uncertainty_calibration_samples.png")
            if figure:
                drawn["uncertainty_calibration_samples"] = figure
    settings["uncertainty_map"] = ("calibrated" if mapped else "samples") if uncertainty else None
    summary: dict[str, Any] = {
        "settings": settings,
        "tasks": entries,
        "vs_lut_wins": lut_wins(entries),
        "luts": {f"{s}->{t}": lut.to_dict() for (s, t), lut in luts.items()},
        "figures": drawn,
        "skipped": skipped,
        "calibration": calib,
        **({"calibration_samples": spread} if mapped else {}),
        "calibration_cases": run.calibration,
        "files": {"cases_csv": str(out / "cases.csv"), "summary_md": str(out / "summary.md"),
                  "summary_json": str(out / "summary.json")},
    }
    write_csv(out / "cases.csv", rows)
    write_markdown(out / "summary.md", entries, settings, calibration_markdown(calib, spread if mapped else None)
                   if calib else None)
    write_json(out / "summary.json", summary)
    logger.info("evaluated %d subjects, %d tasks, methods %s: report in %s", len(subjects), len(pairs),
                ", ".join(all_methods), out)
    return json_safe(summary)

