"""`mrtranslate evaluate`: run a model over a dataset folder and write the report; thin over ``mrtranslate.evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from .app import app

_METHODS = ("aldm", "spade")


def _method_list(given: List[str], extra: List[str]) -> list[str]:
    """``--method aldm spade``, ``--method aldm --method spade`` and ``--method aldm,spade`` alike.

    Words after ``--method`` that are method names reach the command as extra arguments (the command has no
    positional argument); anything else there is a mistake. ``--method none``: the baseline alone.
    """
    methods = [m.strip().lower() for value in given for m in value.split(",") if m.strip()]
    for word in extra:
        if word.strip().lower() not in _METHODS:
            raise UsageError(f"unexpected argument {word!r}: evaluate takes options only (methods are aldm, spade)")
        methods.append(word.strip().lower())
    return [] if methods == ["none"] else methods


@app.command(
    "evaluate",
    context_settings={"allow_extra_args": True},
    help=(
        "Evaluate a model on every subject of a dataset folder (BraTS or BIDS layout): synthesise each --to target "
        "from the --source, and write predictions, cases.csv, summary.md (mean ± std of PSNR, NMSE and SSIM in the "
        "brain per task and method), summary.json and one PNG per task into --out.\n\n"
        "Methods: aldm (the full model), spade (MS-SPADE only, decoded without diffusion). --baseline lut adds the "
        "1-D intensity lookup table (the mean target intensity of each of 64 source-intensity bins) fitted on the "
        "subjects of --fit-data. "
        "Brain = target voxels > 0; subjects with a label map (<case>_seg) are also scored in the tumour (labels > 0) "
        "and the healthy brain. Resumable: predictions made with the same model, solver, steps, eta, strength, samples and seed "
        "are reused."
    ),
)
def evaluate_command(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset folder of subjects with all the modalities needed."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (created; reused to resume)."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub repo id org/name or org/name@revision, model folder, or bundled name (default: the bundled model)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    source: str = typer.Option("t1", "--source", help="Source modality, or 'all' for every ordered pair of modalities."),
    to: Optional[List[str]] = typer.Option(None, "--to", help="Target modalities (default: every modality but the source)."),
    method: List[str] = typer.Option(["aldm"], "--method", help="aldm (full model) and/or spade (MS-SPADE only): --method aldm spade; none: the baseline alone."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="'lut': add the 1-D intensity lookup-table baseline."),
    fit_data: Optional[Path] = typer.Option(None, "--fit-data", help="Subjects to fit the lookup tables on (e.g. the training set)."),
    cases: Optional[int] = typer.Option(None, "--cases", help="Evaluate only the first N subjects (sorted by name)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: the model's)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta (default: the model's)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="Sampling strength, 1 = from pure noise (default: the model's)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Diffusion samples averaged per target (default: the model's)."),
    solver: Optional[str] = typer.Option(None, "--solver", help="Sampler: ddim (as the authors sample), dpm++2m or unipc (multistep solvers made for few steps, e.g. 15-25; deterministic, --eta unused; default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler (the same for every subject)."),
    figure_case: Optional[str] = typer.Option(None, "--figure-case", help="Subject shown in the figures (default: the first)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Write no PNG figures (matplotlib not needed)."),
    uncertainty: bool = typer.Option(False, "--uncertainty", help="Also write ALDM's per-voxel SD across samples (2 or more) beside each prediction and report how it tracks the real error, and how the model's expected-error map (its uncertainty.json, when it has one) does: Spearman correlation and mean error by SD decile per task, with a figure."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, no table at the end."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    from ..evaluation.evaluate import evaluate
    from ..pipeline.options import SamplingOptions

    summary = evaluate(
        data, model, source, to or None, _method_list(method, list(ctx.args)), out, cases=cases,
        baseline=baseline, fit_data=fit_data, progress=not quiet,
        sampling=SamplingOptions(steps=steps, eta=eta, strength=strength, samples=samples, seed=seed, solver=solver), device=device, dtype=precision,
        revision=revision, local_files_only=offline, figures=not no_figures, figure_case=figure_case,
        uncertainty=uncertainty,
    )
    if not quiet:
        typer.echo(Path(summary["files"]["summary_md"]).read_text(encoding="utf-8"))
        typer.echo(f"report: {out}")
