"""`mrtranslate train autoencoder|spade|diffusion`: the three ALDM training stages, resumable; `refiner`, the
detail refiner on an exported model's outputs; `encode`, `uncertainty`, `standard`: what a model folder gets
after training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..training.runs import RunFolder
from .app import app

train_app = typer.Typer(
    help=(
        "Train the ALDM stages in order: autoencoder -> spade (--first-stage the autoencoder run) -> diffusion "
        "(--first-stage the spade run); then `mrtranslate export`. Ctrl-C saves a checkpoint; --resume continues. "
        "Several GPUs: torchrun --nproc-per-node N -m mrtranslate -- train ... (the -- keeps torchrun from reading --run)"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(train_app, name="train")

DATA = typer.Option(None, "--data", help="Dataset folder (BraTS 2021/2023 or BIDS layout). On --resume: the recorded one.")
LATENT_DATA = typer.Option(
    None, "--data", help="Dataset folder (BraTS 2021/2023 or BIDS layout), or a latent pack of it made by "
    "`mrtranslate train encode` with the same first stage. On --resume: the recorded one."
)
RUN = typer.Option(..., "--run", help="Run folder: config, metrics.csv, checkpoint/ (created).")
CONFIG = typer.Option(None, "--config", help="JSON file of settings overriding the published defaults.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --run from its checkpoint, exactly.")
MAX_MINUTES = typer.Option(None, "--max-minutes", help="Checkpoint and stop before this many minutes have passed.")
DEVICE = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N.")
STEPS = typer.Option(None, "--steps", help="Total steps (overrides the config; on --resume: to train longer).")
MAX_MEMORY = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB (default: what is free); a step estimated to need more is refused before the data load.")
THREADS = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice, one per core).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary.")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks of errors.")


def _argv(stage: str, **opts: object) -> list[str]:
    argv = ["mrtranslate", "train", stage]
    for name, value in opts.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _train(stage: str, data: Optional[Path], run: Path, config: Optional[Path], resume: bool,
           max_minutes: Optional[float], device: Optional[str], steps: Optional[int],
           first_stage: Optional[str], threads: Optional[int], quiet: bool, init: Optional[str] = None,
           max_memory: Optional[str] = None, **settings: object) -> int:
    from ..training.trainer import train

    given = {k: str(v) for k, v in settings.items() if v is not None}
    argv = _argv(stage, data=data, run=run, config=config, first_stage=first_stage, init=init, resume=resume,
                 steps=steps, max_minutes=max_minutes, device=device, threads=threads, max_memory=max_memory,
                 **{("model" if k == "model_folder" else k): v for k, v in given.items()})
    result = train(stage, run, data, config, resume=resume, max_minutes=max_minutes, device=device, steps=steps,
                   first_stage=first_stage, init=init, progress=not quiet, command=argv, threads=threads,
                   max_memory=max_memory, settings=given or None)
    if stage == "refiner" and result.main_process and result.status == "finished":
        from ..training.refiner import install_refiner

        record = RunFolder(run).read_config()
        where = install_refiner(run, record.model_folder)  # type: ignore[attr-defined]
        if not quiet:
            typer.echo(f"refiner written to {where}", err=True)
    if not quiet and result.main_process:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k not in ("step", "elapsed_s", "lr"))
        typer.echo(
            f"{result.stage}: step {result.step}/{result.steps} ({result.status.replace('_', ' ')}), "
            f"{result.elapsed_s / 60:.1f} min in all; {losses}; checkpoint in {result.run / 'checkpoint'}",
            err=True,
        )
    return result.exit_code


@train_app.command("autoencoder")
def train_autoencoder(
    data: Optional[Path] = DATA, run: Path = RUN, config: Optional[Path] = CONFIG,
    init: Optional[str] = typer.Option(
        None, "--init", help="Fine-tune: a model folder (or autoencoder/spade run) whose VQ-GAN, of the config's "
        "architecture, starts training (config freeze_encoder: train the decoder only)."
    ),
    resume: bool = RESUME,
    max_minutes: Optional[float] = MAX_MINUTES, device: Optional[str] = DEVICE, steps: Optional[int] = STEPS,
    threads: Optional[int] = THREADS, max_memory: Optional[str] = MAX_MEMORY, quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> int:
    """Stage 1: the VQ-GAN (L1 + codebook [+ PatchGAN] [+ perceptual]) on random crops."""
    return _train("autoencoder", data, run, config, resume, max_minutes, device, steps, None, threads, quiet, init,
                  max_memory)


@train_app.command("spade")
def train_spade(
    data: Optional[Path] = LATENT_DATA, run: Path = RUN, config: Optional[Path] = CONFIG,
    first_stage: Optional[str] = typer.Option(None, "--first-stage", help="The autoencoder run folder (or a model folder)."),
    resume: bool = RESUME, max_minutes: Optional[float] = MAX_MINUTES, device: Optional[str] = DEVICE,
    steps: Optional[int] = STEPS, threads: Optional[int] = THREADS, max_memory: Optional[str] = MAX_MEMORY,
    quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """Stage 2: MS-SPADE on the frozen first stage's latents (L1 + latent discriminator [+ cycle])."""
    return _train("spade", data, run, config, resume, max_minutes, device, steps, first_stage, threads, quiet,
                  max_memory=max_memory)


@train_app.command("diffusion")
def train_diffusion(
    data: Optional[Path] = LATENT_DATA, run: Path = RUN, config: Optional[Path] = CONFIG,
    first_stage: Optional[str] = typer.Option(None, "--first-stage", help="The spade run folder (or a model folder)."),
    init: Optional[str] = typer.Option(
        None, "--init", help="Fine-tune: a model folder whose UNet (same architecture) starts the UNet and its EMA."
    ),
    resume: bool = RESUME, max_minutes: Optional[float] = MAX_MINUTES, device: Optional[str] = DEVICE,
    steps: Optional[int] = STEPS, threads: Optional[int] = THREADS, max_memory: Optional[str] = MAX_MEMORY,
    quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """Stage 3: the latent diffusion UNet (MSE on its prediction target: the noise as published, x0, v, or a correction to MS-SPADE's latent; EMA weights)."""
    return _train("diffusion", data, run, config, resume, max_minutes, device, steps, first_stage, threads, quiet,
                  init, max_memory)


@train_app.command("refiner")
def train_refiner(
    data: Optional[Path] = typer.Option(None, "--data", help="The training subjects that --report evaluated (fine-grid scans, e.g. 1 mm). On --resume: the recorded one."),
    run: Path = RUN,
    model: Optional[Path] = typer.Option(None, "--model", help="The exported model folder, without a refiner; the finished run writes its refiner/ there."),
    report: Optional[Path] = typer.Option(None, "--report", help="The --out folder of `mrtranslate evaluate --model MODEL --data DATA --source all` at the model's default sampling."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file of settings overriding the refiner's defaults (network, crop, loss, targets)."),
    resume: bool = RESUME, max_minutes: Optional[float] = MAX_MINUTES,
    device: Optional[str] = DEVICE, steps: Optional[int] = STEPS, threads: Optional[int] = THREADS,
    quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """The detail refiner: learns to correct a model's outputs on fine input grids from its own predictions on training subjects; written into --model when the run finishes."""
    if not resume and (model is None or report is None):
        from ..errors import UsageError

        raise UsageError("a new refiner run needs --model (the exported model folder) and --report (its evaluate "
                         "report on the --data subjects)")
    return _train("refiner", data, run, config, resume, max_minutes, device, steps, None, threads, quiet,
                  model_folder=str(model) if model is not None else None,
                  report=str(report) if report is not None else None)


@train_app.command("encode")
def train_encode(
    data: Path = typer.Option(..., "--data", help="Dataset folder (BraTS 2021/2023 or BIDS layout)."),
    first_stage: str = typer.Option(..., "--first-stage", help="The autoencoder or spade run folder, or a model folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The pack file to write (.safetensors)."),
    device: Optional[str] = DEVICE, threads: Optional[int] = THREADS, quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """Encode a dataset once into a latent pack: the spade and diffusion stages train from it (--data PACK)."""
    import torch

    from ..training.distributed import resolve_device
    from ..training.first_stage import load_first_stage
    from ..training.packs import write_pack

    if threads is not None:
        torch.set_num_threads(threads)
    first = load_first_stage(first_stage)
    info = write_pack(data, first, out, resolve_device(device), progress=not quiet)
    if not quiet:
        typer.echo(f"{info['n_subjects']} subject(s) of {data} encoded into {out}", err=True)
    return 0


@train_app.command("uncertainty")
def train_uncertainty(
    model: Path = typer.Option(..., "--model", help="The exported model folder; its uncertainty.json is (re)written."),
    report: Path = typer.Option(..., "--report", help="The --out folder of `mrtranslate evaluate --model MODEL --source all --uncertainty` on training subjects, at the model's default sampling."),
    data: Path = typer.Option(..., "--data", help="The dataset folder that report evaluated."),
    validation: list[str] = typer.Option([], "--validation", help="NAME=DATA=REPORT: a report of the same evaluate command on validation subjects (repeatable); only pairs whose map ranks errors better than the samples' spread on every one are kept."),
    quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """Fit the model's error model (uncertainty.json) from its predictions on training subjects: what --uncertainty maps by default."""
    from ..training.uncertainty import fit_error_model, parse_validation

    fitted = fit_error_model(model, report, data, parse_validation(validation), progress=not quiet)
    path = fitted.save(model)
    if not quiet:
        dropped = sorted(k for k, v in fitted.validation.items() if not v["kept"])
        typer.echo(f"error tables of {len(fitted.pairs)} pair(s) from {len(fitted.fitted_on)} subject(s) written to "
                   f"{path}" + (f"; the samples' spread kept for {', '.join(dropped)}" if dropped else ""), err=True)
    return 0


@train_app.command("standard")
def train_standard(
    model: Path = typer.Option(..., "--model", help="The exported model folder; its model_index.json gets the landmarks."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training subjects (BraTS or BIDS layout) whose real scans give each target's landmarks."),
    to: list[str] = typer.Option([], "--to", help="The targets whose outputs are standardised (repeatable, or several after one --to)."),
    remove: bool = typer.Option(False, "--remove", help="Remove the model's output standardisation instead."),
    quiet: bool = QUIET, debug: bool = DEBUG,
) -> int:
    """Standardise a model's outputs of --to targets to the histogram of real scans of those contrasts (landmarks from --data)."""
    from ..errors import UsageError
    from ..training.standard import fit_output_standard, write_output_standard

    if remove:
        if to or data is not None:
            raise UsageError("--remove takes no --to or --data: it removes the standardisation of every target")
        path = write_output_standard(model, None)
        if not quiet:
            typer.echo(f"output standardisation removed from {path}", err=True)
        return 0
    if data is None:
        raise UsageError("--data is needed: the training subjects whose scans give the landmarks")
    standard, used = fit_output_standard(model, data, to, progress=not quiet)
    path = write_output_standard(model, standard)
    if not quiet:
        typer.echo(f"landmarks of {', '.join(f'{t} ({len(c)} scans)' for t, c in used.items())} written to {path}", err=True)
    return 0
