"""``train()``: run (or resume) one stage in a run folder, with checkpoints that survive interruption.

The loop checkpoints every ``checkpoint_minutes`` of wall time, at the end, when ``max_minutes`` would be
exceeded by one more step, and on SIGINT/SIGTERM (then the exit code is 128 + the signal number, 130 for
Ctrl-C). Every random draw of step k depends only on ``(seed, k, rank)``, and the checkpoint holds all
weights, optimizer moments and EMA, so N steps in one go equal N/2 steps, a resume and N/2 more, exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..pipeline.runtime import parse_memory
from .builders import build_stage
from .checkpoint import load_checkpoint, save_checkpoint
from .config import STAGES, TrainConfig, load_config
from .data import step_generator
from .distributed import DistContext, setup
from .runs import RunFolder, StopSignals
from .stage import Stage

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a call of :func:`train` ended."""

    run: Path
    stage: str
    step: int
    steps: int
    status: str  # "finished", "time_limit" or "interrupted"
    elapsed_s: float
    metrics: dict[str, float]
    exit_code: int
    main_process: bool = True  # False in the other processes of a torchrun launch


def _resolve_config(
    stage: str, run: RunFolder, resume: bool, config: Path | str | dict[str, Any] | TrainConfig | None,
    steps: int | None, first_stage: str | None, init: str | None = None, settings: dict[str, Any] | None = None,
) -> TrainConfig:
    if stage not in STAGES:
        raise UsageError(f"unknown training stage {stage!r}: use one of {', '.join(STAGES)}")
    if resume:
        run.check_resumable()
        if run.stage != stage:
            raise UsageError(f"--resume: {run.path} is a {run.stage} run, not a {stage} run")
        if config is not None or first_stage is not None or init is not None or settings:
            raise UsageError(
                "--resume continues a run with its own config: drop --config/--first-stage/--init/--model/--report "
                "(--steps may change)"
            )
        cfg = run.read_config()
        if steps is not None:
            cfg.steps = steps
            cfg.validate("--steps")
        return cfg
    run.check_new()
    overrides: dict[str, Any] = dict(settings or {})
    if steps is not None:
        overrides["steps"] = steps
    if first_stage is not None:
        overrides["first_stage"] = str(first_stage)
    if init is not None:
        if stage == "refiner":
            raise UsageError("--init is not for the refiner stage: it starts as the identity (its head is zero)")
        if stage == "spade":
            raise UsageError(
                "--init is for the autoencoder (a VQ-GAN to fine-tune) and diffusion (a UNet) stages: the spade stage "
                "continues the MS-SPADE of its --first-stage"
            )
        overrides["init"] = str(init)
    if isinstance(config, TrainConfig):
        data = {k: v for k, v in config.to_dict().items()}
        return load_config(stage, None, {**data, **overrides})
    if isinstance(config, dict):
        return load_config(stage, None, {**config, **overrides})
    cfg = load_config(stage, config, overrides)
    if stage in ("spade", "diffusion") and not getattr(cfg, "first_stage", None):
        raise UsageError(
            f"the {stage} stage needs a first stage: pass --first-stage RUN_OR_MODEL_FOLDER or set first_stage in the config"
        )
    return cfg


def train(
    stage: str,
    run: Path | str,
    data: Path | str | None = None,
    config: Path | str | dict[str, Any] | TrainConfig | None = None,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    device: str | None = None,
    steps: int | None = None,
    first_stage: str | None = None,
    init: str | None = None,
    progress: bool = True,
    command: list[str] | None = None,
    threads: int | None = None,
    max_memory: int | str | None = None,
    settings: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``stage`` (autoencoder, spade, diffusion, refiner) in the run folder ``run``; see the module docstring.

    ``config``: a JSON file, a dict of settings or a config object (defaults: the published values).
    ``data``: the dataset folder (BraTS 2021/2023 or BIDS layout); on resume the recorded one by default.
    ``steps`` overrides the config's total steps (also on resume, to train longer); ``first_stage`` and ``init``
    (diffusion: a model folder whose UNet starts the UNet, for fine-tuning) the config's, and ``settings`` (a
    new run's) any other keys (the refiner stage: ``model_folder`` and ``report``). ``command`` is the
    command line recorded in ``run.json`` for the model card. ``threads`` sets torch's CPU threads (on a
    machine shared with other work, fewer threads than cores is often faster). Before the data are loaded,
    the peak memory of a step is estimated and a run that would not fit what the device has free (or
    ``max_memory``, e.g. ``"8GB"``) is refused with MemoryBudgetError.
    """
    launch = time.monotonic()
    folder = RunFolder(run)
    if max_minutes is not None and not max_minutes >= 0:
        raise UsageError(f"--max-minutes {max_minutes} must be >= 0")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} must be >= 1")
        torch.set_num_threads(threads)
    parse_memory(max_memory)  # a malformed size fails before any work
    cfg = _resolve_config(stage, folder, resume, config, steps, first_stage, init, settings)
    ctx = setup(device or cfg.device)
    try:
        return _train(cfg, folder, ctx, data, resume, max_minutes, progress, command, launch, max_memory)
    finally:
        ctx.close()


def _train(
    cfg: TrainConfig, folder: RunFolder, ctx: DistContext, data: Path | str | None, resume: bool,
    max_minutes: float | None, progress: bool, command: list[str] | None, launch: float,
    max_memory: int | str | None = None,
) -> TrainResult:
    record = folder.read_run() if resume else None
    if data is None and record is not None and record.get("data"):
        data = record["data"].get("folder") or record["data"].get("pack")
    built = build_stage(cfg, ctx, folder, data, record, progress and ctx.is_main, max_memory)
    stage = built.stage
    step, elapsed0 = 0, 0.0
    if resume:
        tensors, scalars = load_checkpoint(folder.checkpoint_dir)
        stage.load_state(tensors, scalars, str(folder.checkpoint_dir))
        step, elapsed0 = int(scalars["step"]), float(scalars["elapsed_s"])
        del tensors
    columns = ["step", "elapsed_s", *stage.metric_names, "lr"]
    if ctx.is_main:
        folder.write_config(cfg)
        if not resume:
            folder.write_run(folder.new_record(cfg.stage, built.data_info, **built.record))
        folder.add_command(command or [], step, ctx.world_size)
        folder.start_metrics(columns, after_step=step, fresh=not resume)
    ctx.barrier()

    def checkpoint(at: int, now: float) -> None:
        if not ctx.is_main:
            return
        tensors, scalars = stage.state()
        scalars.update(stage.metadata())
        scalars.update({"stage": cfg.stage, "step": at, "elapsed_s": elapsed0 + now - launch, "config": cfg.to_dict()})
        scalars["world_size"] = ctx.world_size
        save_checkpoint(folder.checkpoint_dir, tensors, scalars)
        logger.info("checkpoint at step %d in %s", at, folder.checkpoint_dir)

    status = "finished"
    exit_code = 0
    sums: dict[str, torch.Tensor] = {}
    window = 0
    last_checkpoint = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.stage, unit="step", disable=not (progress and ctx.is_main))
    cuda = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with StopSignals() as signals, bar:
        if step >= cfg.steps and not folder.has_checkpoint():
            checkpoint(step, time.monotonic())
        while step < cfg.steps:
            started = time.monotonic()
            batch = stage.batch(step)
            with torch.random.fork_rng(devices=cuda):
                # anything drawing from the global generator (dropout) is seeded per step as well
                torch.manual_seed(step_generator(cfg.seed, step, ctx.rank, stream=1).initial_seed())
                stage.set_lr(step)
                losses = stage.train_step(batch, step)
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            window += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                _log(folder, ctx, stage, columns, sums, window, step, elapsed0 + time.monotonic() - launch)
                sums, window = {}, 0
            if bar.disable is False:
                bar.set_postfix(loss=f"{float(losses['loss']):.4g}", refresh=False)
                bar.update(1)
            now = time.monotonic()
            time_up = max_minutes is not None and (now - launch) + (now - started) > 60.0 * max_minutes
            due = now - last_checkpoint >= 60.0 * cfg.checkpoint_minutes
            interrupted, time_up, due = ctx.any([signals.received is not None, time_up, due])
            if interrupted or time_up or due or step == cfg.steps:
                checkpoint(step, now)
                last_checkpoint = time.monotonic()
            if interrupted:
                status, exit_code = "interrupted", signals.exit_code or 130
                break
            if time_up:
                status = "time_limit"
                break
    ctx.barrier()
    metrics = folder.last_metrics(upto=step) if ctx.is_main else {}
    elapsed = elapsed0 + time.monotonic() - launch
    return TrainResult(folder.path, cfg.stage, step, cfg.steps, status, elapsed, metrics, exit_code, ctx.is_main)


def _log(
    folder: RunFolder, ctx: DistContext, stage: Stage, columns: list[str], sums: dict[str, torch.Tensor],
    window: int, step: int, elapsed: float,
) -> None:
    """One metrics row: each loss averaged over the steps since the last row and over all processes."""
    names = list(stage.metric_names)
    values = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float32, device=ctx.device) for k in names])
    values = ctx.mean(values / max(window, 1)).tolist()
    if ctx.is_main:
        row: dict[str, Any] = {"step": step, "elapsed_s": round(elapsed, 2), "lr": stage.lr}
        row.update(dict(zip(names, values, strict=True)))
        folder.append_metrics(columns, row)
