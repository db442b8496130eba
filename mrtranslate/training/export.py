"""``export()``: a run's latest checkpoint -> a model folder with a model card.

A diffusion run gives the complete model (VQ-GAN with its trained MS-SPADE, the EMA UNet, the scheduler);
an autoencoder or spade run gives a first-stage-only folder (reconstruction and MS-SPADE, no sampling).
The model card (README.md) lists the data, the exact command lines of every stage that led to the
weights (each run records its own and copies its upstream runs'), steps, wall time and final losses.
"""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import ModelFormatError, OutputExistsError, UsageError
from ..models import VQGAN, UNet, UNetConfig, VQGANConfig
from ..pipeline import ALDMPipeline
from ..pipeline.config import PipelineConfig, check_samples
from ..schedulers import DDIMScheduler, SchedulerConfig
from ..schedulers.ddim import is_strength
from ..schedulers.solver import check_solver
from .checkpoint import load_checkpoint, load_module
from .first_stage import run_summary
from .runs import RunFolder

CITATION = """@inproceedings{kim2024aldm,
  title     = {Adaptive Latent Diffusion Model for 3D Medical Image to Image Translation:
               Multi-modal Magnetic Resonance Imaging Study},
  author    = {Kim, Jonghun and Park, Hyunjin},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2024}
}"""


def export(
    run: Path | str,
    out: Path | str,
    *,
    weights: str = "ema",
    name: str | None = None,
    default_steps: int | None = None,
    default_strength: float = 1.0,
    default_samples: int = 1,
    default_eta: float = 1.0,
    pair_strength: dict[str, float] | None = None,
    overwrite: bool = False,
    best_source: dict[str, str] | None = None,
    default_solver: str = "ddim",
) -> Path:
    """Write the model folder ``out`` from the run folder ``run``; returns ``out``.

    ``weights``: ``ema`` (what the authors sample with) or ``raw`` UNet weights of a diffusion run.
    ``default_steps``: the DDIM steps the folder suggests (default: the published 200); ``default_strength``
    the sampling strength it suggests (1: from pure noise, as published; see ``ALDMPipeline.sample``);
    ``default_samples`` the diffusion samples it suggests averaging per target (1, as published);
    ``default_eta`` the DDIM eta it suggests (1 as published; 0: deterministic);
    ``pair_strength`` ``{"source->target": strength}`` for pairs whose strength differs from ``default_strength``;
    ``best_source`` ``{target: source}``: the source that predicts each target best (``mrtranslate complete``).
    ``default_solver`` the sampler it suggests ("ddim" as published, "dpm++2m" or "unipc").
    """
    folder = RunFolder(run)
    if not folder.is_run():
        raise UsageError(f"{folder.path} is not a training run folder (no config.json and run.json)")
    if not folder.has_checkpoint():
        raise UsageError(f"{folder.path} has no checkpoint yet: train it first")
    if weights not in ("ema", "raw"):
        raise UsageError(f"--weights {weights!r}: use ema or raw")
    if not is_strength(default_strength):
        raise UsageError(f"--default-strength {default_strength!r}: use a number in [0, 1] (1: as published; 0: MS-SPADE only)")
    check_samples(default_samples, "--default-samples")
    check_solver(default_solver, "--default-solver")
    if isinstance(default_eta, bool) or not isinstance(default_eta, (int, float)) or not 0.0 <= default_eta <= 1.0:
        raise UsageError(f"--default-eta {default_eta!r}: use a number from 0 (deterministic) to 1 (as published)")
    pairs = PipelineConfig(pair_strength=dict(pair_strength or {}), best_source=dict(best_source or {}))
    try:  # the checks model_index.json gets, before any checkpoint is read
        pairs.validate("--pair-strength/--best-source")
    except ModelFormatError as exc:
        raise UsageError(f"{exc} (e.g. --pair-strength 't1->t1ce=0.02')") from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise OutputExistsError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    tensors, scalars = load_checkpoint(folder.checkpoint_dir)
    origin = str(folder.checkpoint_dir)
    stage = scalars.get("stage")
    if pair_strength and stage != "diffusion":
        raise UsageError(f"--pair-strength sets how the diffusion stage samples; {folder.path} is a {stage} run "
                         "(no diffusion UNet): drop it")
    try:
        vqgan = VQGAN(VQGANConfig.from_dict(scalars["vqgan_config"], origin=origin))
        prep = dict(scalars["preprocessing"])
        cfg = scalars["config"]
    except KeyError as exc:
        raise ModelFormatError(f"{origin}: checkpoint lacks {exc}") from None
    load_module("model/vqgan", vqgan, tensors, origin)
    unet = scheduler = None
    if stage == "diffusion":
        unet = UNet(UNetConfig.from_dict(cfg["model"], origin=origin))
        load_module("model/unet", unet, tensors, origin)
        if weights == "ema":
            with torch.no_grad():
                for k, p in unet.named_parameters():
                    p.copy_(tensors[f"ema/unet/{k}"])
        scheduler = DDIMScheduler(SchedulerConfig.from_dict(cfg["scheduler"], origin=origin))
    summary = run_summary(folder)
    stages = list(folder.read_run().get("provenance", [])) + [summary]
    title = name or f"ALDM {'model' if unet is not None else 'first stage'} ({folder.path.name}, step {scalars['step']})"
    pcfg = PipelineConfig(preprocessing=prep, name=title, default_steps=default_steps or 200, default_eta=float(default_eta),
                          default_strength=default_strength, default_samples=default_samples,
                          pair_strength=pairs.pair_strength, best_source=pairs.best_source,
                          default_solver=default_solver)
    pcfg.validate("model_index.json")
    pipe = ALDMPipeline(vqgan.eval(), unet, scheduler, pcfg)
    card = model_card(title, pipe, stages, weights if unet is not None else None)
    return pipe.save_pretrained(out, model_card=card)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return str(datetime.timedelta(seconds=round(float(seconds))))


def _losses(metrics: dict[str, float]) -> str:
    shown = {k: v for k, v in metrics.items() if k not in ("step", "elapsed_s", "lr")}
    if "loss" in shown:
        shown = {"loss": shown.pop("loss"), **shown}
    return ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) or "-"


def _data_lines(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return ["- not recorded"]
    cases = data.get("cases", [])
    shown = ", ".join(cases[:12]) + (f", ... ({len(cases) - 12} more)" if len(cases) > 12 else "")
    lines = [f"- folder: `{data.get('folder')}`", f"- subjects: {data.get('n_subjects')} ({shown})"]
    phantom = data.get("phantom")
    if phantom:
        lines.append(
            "- synthetic phantoms (`mrtranslate phantom`): "
            + ", ".join(f"{k} {v}" for k, v in phantom.items() if k != "generator")
            + f" ({phantom.get('generator', 'mrtranslate')})"
        )
    return lines


def _command_lines(stage: dict[str, Any]) -> list[str]:
    lines = []
    for c in stage.get("commands", []):
        argv = list(c.get("argv") or [])
        if c.get("world_size", 1) > 1 and argv[:1] == ["mrtranslate"]:
            argv = ["torchrun", "--nproc-per-node", str(c["world_size"]), "-m", "mrtranslate", "--", *argv[1:]]
        text = shlex.join(argv) if argv else "(called from Python)"
        lines.append(f"{text}    # from step {c.get('start_step', 0)}, {c.get('started', '')}")
    return lines


def _gate_lines(pipe: ALDMPipeline) -> list[str]:
    """The MS-SPADE source gate's values (mean over channels) per pair, when the model has one."""
    gate = pipe.vqgan.spade.source_gate
    if gate is None:
        return []
    mods = pipe.modalities
    lines = ["- MS-SPADE has a source gate (not published; `mrtranslate train spade` with `source_gate`): a pair's "
             "output is `y + g * (z - y)`, with `y` the blocks' output and `z` the source latent; `g` per pair "
             "(mean over the latent channels; rows: source, columns: target):", "",
             "| source \\ target | " + " | ".join(mods) + " |", "| --- |" + " --: |" * len(mods)]
    for i, src in enumerate(mods):
        cells = ["-" if i == j else f"{float(gate[i, j].detach().mean()):.3f}" for j in range(len(mods))]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return lines + [""]


def model_card(title: str, pipe: ALDMPipeline, stages: list[dict[str, Any]], weights: str | None) -> str:
    p = pipe.config.preprocessing
    runs = [s for s in stages if s.get("stage") in ("autoencoder", "spade", "diffusion")]
    data = next((s.get("data") for s in reversed(runs) if s.get("data")), None)
    lines = [
        "---",
        "library_name: mrtranslate",
        "tags: [mri, brain, image-to-image, diffusion, aldm, medical-imaging]",
        "---",
        f"# {title}",
        "",
        "An Adaptive Latent Diffusion Model (ALDM, Kim & Park, WACV 2024) trained with "
        f"[mrtranslate](https://pypi.org/project/mrtranslate/) {__version__} (`mrtranslate train`).",
        "",
        f"- components: {', '.join(pipe.config.components)}"
        + (f" (UNet: {weights} weights)" if weights else " (first stage only: reconstruction and MS-SPADE, no sampling)"),
        f"- modalities: {', '.join(pipe.modalities)}",
        *([f"- sampling it suggests: {pipe.config.sampling_summary()}"] if weights else []),
        f"- model space: {p['spacing_mm']} mm RAS grid {p['grid']}, intensities: percentiles "
        f"{p['lower_percentile']} / {p['upper_percentile']} -> -1 / +1",
        *_gate_lines(pipe),
        "",
        "## Data",
        *_data_lines(data),
        "",
        "## Training",
        "| stage | steps | wall time | final losses |",
        "| --- | --- | --- | --- |",
    ]
    for s in runs:
        lines.append(f"| {s['stage']} | {s.get('step')} | {_duration(s.get('elapsed_s'))} | {_losses(s.get('metrics') or {})} |")
    for s in stages:
        if s.get("stage") == "model":
            lines += ["", f"First stage taken from the model folder `{s.get('path')}`."]
    for s in runs:
        if s.get("init"):
            what = "VQ-GAN" if s["stage"] == "autoencoder" else f"{s['stage']} UNet (and its EMA)"
            kind = "model folder" if s["init"].get("kind") == "model" else f"{s['init'].get('stage')} run"
            lines += ["", f"The {what} started from the {kind} `{s['init'].get('path')}`."]
    lines += ["", "Commands, in order (each run folder records its own in `run.json`):", "", "```"]
    for s in runs:
        lines += [f"# {s['stage']} (run folder {s.get('run')})", *_command_lines(s)]
    lines += ["```", "", "## Use", "", "```python"]
    if weights:
        lines += ["from mrtranslate import Translator", "",
                  'out = Translator.from_pretrained("path/to/this/folder")("t1.nii.gz", source="t1").to("t2", "flair")']
    else:
        lines += ["from mrtranslate.pipeline import ALDMPipeline", "",
                  'pipe = ALDMPipeline.from_pretrained("path/to/this/folder")  # encode, target_like, decode']
    lines += ["```", "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)
