"""`mrtranslate export RUN --out FOLDER`: a training run -> a model folder with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="A training run folder (diffusion: full model; autoencoder/spade: first stage)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    weights: str = typer.Option("ema", "--weights", help="UNet weights of a diffusion run: ema (as the authors sample) or raw."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in model_index.json and the model card."),
    default_steps: Optional[int] = typer.Option(None, "--default-steps", help="DDIM steps the model suggests (default 200)."),
    default_strength: float = typer.Option(1.0, "--default-strength", help="Sampling strength the model suggests: 1 (as published) samples from pure noise; below 1 starts from the noised MS-SPADE latent; 0 keeps MS-SPADE's latent (no diffusion)."),
    default_samples: int = typer.Option(1, "--default-samples", help="Diffusion samples averaged per target that the model suggests: 1 as published."),
    default_eta: float = typer.Option(1.0, "--default-eta", help="DDIM eta the model suggests: 1 as published, 0 deterministic."),
    default_solver: str = typer.Option("ddim", "--default-solver", help="Sampler the model suggests: ddim (as published), dpm++2m or unipc (pair with fewer --default-steps)."),
    pair_strength: Optional[list[str]] = typer.Option(None, "--pair-strength", metavar="SOURCE->TARGET=S", help="A pair's own sampling strength, where it differs from --default-strength (repeatable; e.g. 't1->t1ce=0.02', or 't1->t1ce=0' for MS-SPADE's output)."),
    best_source: Optional[list[str]] = typer.Option(None, "--best-source", metavar="TARGET=SOURCE", help="The source that predicts TARGET best on validation data, used by `mrtranslate complete` (repeatable; e.g. 'flair=t2')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Export a run's latest checkpoint as a model folder (safetensors + JSON + README.md model card)."""
    from ..pipeline.best_source import parse_best_source
    from ..training.export import export

    folder = export(run, out, weights=weights, name=name, default_steps=default_steps,
                    default_strength=default_strength, default_samples=default_samples, default_eta=default_eta,
                    default_solver=default_solver, pair_strength=_pair_strengths(pair_strength or []), overwrite=overwrite,
                    best_source=parse_best_source(best_source or []))
    if not quiet:
        typer.echo(f"wrote {folder}")


def _pair_strengths(entries: list[str]) -> dict[str, float]:
    """``["t1->t1ce=0.02", ...]`` -> ``{"t1->t1ce": 0.02}``; malformed entries are usage errors."""
    from ..errors import UsageError

    out: dict[str, float] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise UsageError(f"--pair-strength {entry!r}: write SOURCE->TARGET=STRENGTH, e.g. 't1->t1ce=0.02'")
        if key.strip() in out:
            raise UsageError(f"--pair-strength names {key.strip()} twice")
        out[key.strip()] = number
    return out
