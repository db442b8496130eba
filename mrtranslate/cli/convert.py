"""`mrtranslate convert`: published Lightning checkpoints -> model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("convert")
def convert_command(
    out: Path = typer.Option(..., "--out", help="Model folder to write (created; existing files are replaced)."),
    vqgan: Optional[Path] = typer.Option(None, "--vqgan", help="The authors' stage-2 VQ-GAN checkpoint (.ckpt)."),
    ldm: Optional[Path] = typer.Option(None, "--ldm", help="The authors' LDM training checkpoint (.ckpt)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="The authors' yaml config (e.g. brats-ldm-vq-4.yaml): GroupNorm groups, head width, schedule."
    ),
    weights: str = typer.Option("ema", "--weights", help="UNet weights to take from the LDM checkpoint: ema (as the authors sample) or raw."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow full unpickling of a checkpoint that needs it. It can execute code: only for files you trust."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Convert the authors' ALDM checkpoints into a model folder (safetensors + JSON).

    A VQ-GAN checkpoint alone gives a first-stage-only folder (reconstruction and MS-SPADE, no sampling).
    """
    from ..convert import convert_to_folder

    folder = convert_to_folder(out, vqgan=vqgan, ldm=ldm, config=config, weights=weights, trust_pickle=trust_pickle)
    if not quiet:
        typer.echo(f"wrote {folder}")
