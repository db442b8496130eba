"""`mrtranslate phantom`: synthetic multi-contrast brain subjects in the BraTS 2021 layout."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Dataset folder to write (created); one sub-folder per subject."),
    n: int = typer.Option(..., "--n", "-n", help="Number of subjects."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; subject k depends only on (seed, k)."),
    spacing: float = typer.Option(2.0, "--spacing", help="Isotropic voxel size in mm (2 -> 80x96x80, 1 -> 160x192x160)."),
    tumor_fraction: float = typer.Option(0.5, "--tumor-fraction", help="Share of subjects with a tumour, 0 to 1."),
    workers: int = typer.Option(1, "--workers", "-j", help="Processes simulating subjects in parallel."),
    no_blur: bool = typer.Option(False, "--no-blur", help="Skip the random point-spread blur."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, print nothing on success."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Simulate T1, T1ce, T2, FLAIR and tumour labels of N phantom subjects (needs the train extra).

    Anatomy: the ICBM 2009a template bundled with nilearn, randomly deformed; contrast from 3 T relaxation
    times and per-subject protocols; bias, blur and Rician noise. Same seed, same files, byte for byte.
    """
    from ..phantom.simulator import write_dataset

    folders = write_dataset(
        out, n, seed=seed, spacing=spacing, tumor_fraction=tumor_fraction, workers=workers,
        progress=not quiet, blur=not no_blur,
    )
    if not quiet:
        typer.echo(f"wrote {len(folders)} subjects to {out}")
