"""`mrtranslate complete SUBJECT_OR_DATASET` and the dataset runs of `mrtranslate DIR --to ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from .app import EXIT_ERROR, EXIT_OK, app


def set_threads(threads: Optional[int]) -> None:
    """``--threads N``: PyTorch's CPU threads (None: PyTorch's default, all cores)."""
    from ..errors import UsageError

    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads {threads}: use a whole number >= 1")
    import torch

    torch.set_num_threads(threads)


def report(summary: Any, quiet: bool) -> int:
    """The summary line (stdout unless --quiet), each failure (stderr); exit 1 when anything failed."""
    if not quiet or summary.failed:
        typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{len(summary.failed)} of {summary.subjects} subject{'' if summary.subjects == 1 else 's'} failed:",
                   err=True)
        for case, msg in summary.failed:
            typer.echo(f"  {case}: {msg}", err=True)
        return EXIT_ERROR
    return EXIT_OK


@app.command("complete")
def complete_command(
    path: Path = typer.Argument(..., help="A subject folder, or a dataset of subjects (BraTS 2018-2023 or BIDS).", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Folder of the synthetic images (BIDS default: PATH/derivatives/mrtranslate; needed for BraTS-style folders)."),
    best_source: Optional[List[str]] = typer.Option(None, "--best-source", metavar="TARGET=SOURCE", help="Translate TARGET from SOURCE where the subject has it, instead of the model's choice (repeatable; e.g. 'flair=t2')."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub repo id org/name[@rev], model folder, or bundled name. Default: the bundled brats-2mm."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    token: Optional[str] = typer.Option(None, "--token", help="Hugging Face token for private models (default: the HF_TOKEN environment variable or `hf auth login`)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: the model's)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta (default: the model's)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="Sampling strength (default: the model's)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Diffusion samples averaged per target (default: the model's)."),
    solver: Optional[str] = typer.Option(None, "--solver", help="Sampler: ddim, dpm++2m or unipc (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical outputs."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the N-th GPU) or mps (Apple GPUs)."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, fp32 otherwise), fp32, fp16, bf16."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB (default: what is free)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads PyTorch uses (default: all cores)."),
    output_dtype: str = typer.Option("float32", "--output-dtype", help="float32 (1 = the target's 99.5th percentile) or int16 (1000 x that, for viewers and integer tools)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (default: skip them and count them in the summary)."),
    continue_on_error: bool = typer.Option(False, "--continue-on-error", help="Go on with the other subjects after a failure; list failures at the end and exit 1."),
    part: int = typer.Option(0, "--part", help="This job's share of the subjects: 0 .. --num-parts - 1 (e.g. $SLURM_ARRAY_TASK_ID)."),
    num_parts: int = typer.Option(1, "--num-parts", help="Split the subjects into this many parts (every N-th subject), one per job."),
    allow_skull: bool = typer.Option(False, "--allow-skull", help="Translate inputs that do not look skull-stripped (the model knows brains only: expect nonsense outside the brain)."),
    preprocess: bool = typer.Option(False, "--preprocess", help="Scans as acquired (skull on, own grids): co-register each subject's scans rigidly to its T1ce (else T1), extract the brain there (HD-BET) and complete on that grid; writes the brain mask and the transforms beside the outputs (pip install \"mrtranslate[preprocess]\")."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files (like HF_HUB_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary on success."),
    verbose: bool = typer.Option(False, "--verbose", help="Also log what is done (skipped subjects, resampling)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> int:
    """Synthesise every contrast each subject lacks, from the contrast that predicts it best.

    The best source per target is the model's (`mrtranslate info` shows it), else T1<->T1ce and T2<->FLAIR,
    then the others; --best-source overrides it. Outputs carry desc-synth (BIDS) or sit in --out-dir under the
    BraTS names, each with a .json sidecar naming its Sources. Existing outputs are skipped, so a rerun resumes.
    """
    from ..datasets.run import check_dataset, check_part, run_dataset
    from ..pipeline import SamplingOptions
    from ..pipeline.best_source import parse_best_source
    from ..provenance import check_output_dtype

    best = parse_best_source(best_source or [])
    check_part(part, num_parts)
    check_dataset(path, out_dir, completing=True)
    check_output_dtype(output_dtype)
    if preprocess:
        from ..preprocess.brain import check_available

        check_available()
    set_threads(threads)
    sampling = SamplingOptions(steps=steps, eta=eta, strength=strength, samples=samples, seed=seed, solver=solver)
    translator = load_translator(model, revision, token, offline, device, precision, max_memory, sampling,
                                 allow_skull)
    summary = run_dataset(translator, path, None, out_dir=out_dir, best_source=best, overwrite=overwrite,
                          continue_on_error=continue_on_error, part=part, num_parts=num_parts, progress=not quiet,
                          output_dtype=output_dtype, preprocess=preprocess)
    return report(summary, quiet)


def load_translator(model: Optional[str], revision: Optional[str], token: Optional[str], offline: bool, device: str,
                    precision: str, max_memory: Optional[str], sampling: Any, allow_skull: bool,
                    compile_unet: bool = False, progress: bool = False, skull_strip: bool = False) -> Any:
    """The Translator the translate and complete commands run with (``sampling``: a SamplingOptions)."""
    from ..translator import Translator

    return Translator.from_pretrained(
        model, revision=revision, local_files_only=offline, device=device, dtype=precision, max_memory=max_memory,
        compile=compile_unet, progress=progress, token=token, allow_skull=allow_skull, sampling=sampling,
        skull_strip=skull_strip,
    )
