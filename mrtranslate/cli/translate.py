"""`mrtranslate INPUT ... --to t2 flair`: the main job, thin over Translator."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, List, Optional

import typer
from tqdm.auto import tqdm

from ..errors import MRTranslateError, OutputExistsError, UsageError
from .app import EXIT_ERROR, EXIT_OK, app

logger = logging.getLogger("mrtranslate.cli")

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".img", ".hdr")


def output_path(inp: Path, target: str, out_dir: Path | None) -> Path:
    """``<input stem>_<target>.nii.gz`` beside the input, or in ``out_dir``."""
    name = inp.name
    for ext in _IMAGE_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return (out_dir or inp.parent) / f"{name}_{target}.nii.gz"


def sd_path(output: Path) -> Path:
    """Where the SD map of ``output`` goes: ``<output stem>_sd.nii.gz`` beside it."""
    name = output.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else output.stem
    return output.with_name(f"{stem}_sd.nii.gz")


def plan_outputs(inputs: Sequence[Path], targets: Sequence[str], out_dir: Path | None) -> dict[Path, dict[str, Path]]:
    """The output path of every input and target; refuses, before any work, a run that would write over one of
    its inputs or write one file for two inputs (e.g. same names in different folders with --out-dir)."""
    given = {p.resolve(): p for p in inputs}
    writer: dict[Path, Path] = {}
    plan: dict[Path, dict[str, Path]] = {}
    for inp in inputs:
        plan[inp] = {t: output_path(inp, t, out_dir) for t in targets}
        for out in plan[inp].values():
            key = out.resolve()
            if key in given:
                raise OutputExistsError(
                    f"output {out} would replace the input {given[key]}: rename it or pass --out-dir"
                )
            if key in writer:
                raise UsageError(f"{writer[key]} and {inp} would both be written to {out}: list each input once, "
                                 "and give inputs in different folders different names (or no --out-dir)")
            writer[key] = inp
    return plan


@app.command("translate")
def translate_command(
    inputs: List[Path] = typer.Argument(..., help="Input volumes (.nii, .nii.gz, .mgz, or a folder of one DICOM series), one or more; or one dataset folder (BraTS 2018-2023, BIDS, or a folder of image files).", show_default=False),
    to: List[str] = typer.Option(..., "--to", help="Target modalities: t1, t1ce, t2, flair (aliases: t1n t1c t2w t2f, T1w T2w FLAIR)."),
    source: Optional[str] = typer.Option(None, "--source", help="Source modality; guessed from the file name (e.g. _T1w, _t1n) when omitted."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub repo id org/name[@rev], model folder, or bundled name. Default: the bundled brats-2mm."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Folder for outputs (default: beside each input)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's, e.g. 4 for brats-2mm; the authors sample with 200 DDIM steps)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta: 0 deterministic, 1 as the authors sample (default: the model's)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="1: sample from pure noise, as the authors do; below 1: start from the MS-SPADE latent noised to that fraction of the schedule (fewer steps); 0: MS-SPADE's latent, no diffusion (default: the model's, which may differ per pair)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Diffusion samples averaged per target: more give a smoother, less noisy estimate (k times the UNet's time; 1 as the authors sample; default: the model's)."),
    solver: Optional[str] = typer.Option(None, "--solver", help="Sampler: ddim (as the authors sample), dpm++2m or unipc (multistep solvers made for few steps, e.g. 15-25; deterministic, --eta unused; default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical outputs."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the N-th GPU) or mps (Apple GPUs)."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB (default: what is free)."),
    compile_unet: bool = typer.Option(False, "--compile", help="torch.compile the UNet: the first volume pays tens of seconds of compilation, later steps run faster."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose outputs all exist (resume a batch)."),
    continue_on_error: bool = typer.Option(False, "--continue-on-error", help="Go on with the other inputs after a failure; summary at the end."),
    part: int = typer.Option(0, "--part", help="Dataset folders: this job's share of the subjects, 0 .. --num-parts - 1 (e.g. $SLURM_ARRAY_TASK_ID)."),
    num_parts: int = typer.Option(1, "--num-parts", help="Dataset folders: split the subjects into this many parts (every N-th subject), one per job."),
    allow_skull: bool = typer.Option(False, "--allow-skull", help="Translate inputs that do not look skull-stripped (the model knows brains only: expect nonsense outside the brain)."),
    uncertainty: bool = typer.Option(False, "--uncertainty", help="Also write a per-voxel SD map (in the output's units, on the input's grid) as <input>_<target>_sd.nii.gz: the error the model is expected to make there, learnt from its errors on training subjects where the model has an error model (the bundled one does), else the spread across the diffusion samples (needs 2 or more). Trust the output less where it is high."),
    sample_spread: bool = typer.Option(False, "--sample-spread", help="With --uncertainty: write the spread across the diffusion samples, not the model's expected error."),
    skull_strip: bool = typer.Option(False, "--skull-strip", help="Extract the brain first (HD-BET; pip install \"mrtranslate[preprocess]\"), write it as <input>_brainmask.nii.gz and translate inside it (0 outside)."),
    output_dtype: str = typer.Option("float32", "--output-dtype", help="float32 (1 = the target's 99.5th percentile) or int16 (1000 x that, for viewers and integer tools)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads PyTorch uses (default: all cores)."),
    token: Optional[str] = typer.Option(None, "--token", help="Hugging Face token for private models (default: the HF_TOKEN environment variable or `hf auth login`)."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files (like HF_HUB_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, no messages on success."),
    verbose: bool = typer.Option(False, "--verbose", help="Also log what is done (skipped inputs, resampling)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> int:
    """Translate each INPUT into the --to modalities; writes <input>_<target>.nii.gz and a .json record beside it.

    Outputs overlay the input exactly (same grid, affine, qform/sform). Intensities are >= 0 on the model's scale
    of the target contrast (the training scans' 0.5th and 99.5th brain percentiles at 0 and 1; not clipped
    above), and 0 outside the input's brain (voxels > 0). An output that an earlier run of the same command
    wrote (its .json record says so) is already done and kept.

    A dataset folder: every subject's --source (else, per target, the best contrast it has) is translated and
    written in the dataset's convention (BIDS: PATH/derivatives/mrtranslate with desc-synth; BraTS: --out-dir
    with the subject folders and BraTS names); existing outputs are skipped and counted.

    Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted.
    """
    from ..modalities import canonical, canonical_list
    from ..imaging.volume import save_image
    from ..pipeline.options import SamplingOptions

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: pick one")
    targets = canonical_list(to)
    source_name = canonical(source) if source is not None else None  # an unknown name fails before any work
    if source_name in targets:
        raise UsageError(f"target {source_name!r} is the source modality (--source {source}): choose another target")
    from ..provenance import as_output_dtype, check_output_dtype, input_provenance, output_record, per_target
    from ..provenance import check_writable, write_json_atomic
    from .complete import load_translator, report, set_threads

    check_output_dtype(output_dtype)
    set_threads(threads)
    sampling = SamplingOptions(steps=steps, eta=eta, strength=strength, samples=samples, seed=seed, solver=solver)
    if uncertainty and samples == 1:
        raise UsageError("--uncertainty needs 2 or more samples per target: pass --samples 3 or leave out --uncertainty")
    if sample_spread and not uncertainty:
        raise UsageError("--sample-spread chooses the kind of --uncertainty map: add --uncertainty or leave it out")
    kind: str | bool = ("samples" if sample_spread else "calibrated") if uncertainty else False
    from ..imaging.dicom import is_dicom_folder

    if any(inp.is_dir() and not is_dicom_folder(inp) for inp in inputs):
        if uncertainty:
            raise UsageError("--uncertainty works on image files, not dataset folders: pass the images")
        if len(inputs) > 1:
            raise UsageError("pass one dataset folder, or image files: not a folder among other inputs")
        from ..datasets.run import check_dataset, check_part, run_dataset

        check_part(part, num_parts)
        check_dataset(inputs[0], out_dir, completing=False)
        translator = load_translator(model, revision, token, offline, device, precision, max_memory, sampling,
                                     allow_skull, compile_unet, skull_strip=skull_strip)
        summary = run_dataset(translator, inputs[0], targets, source=source_name, out_dir=out_dir,
                              overwrite=overwrite, continue_on_error=continue_on_error, part=part,
                              num_parts=num_parts, progress=not quiet, output_dtype=output_dtype)
        return report(summary, quiet)
    if (part, num_parts) != (0, 1):
        raise UsageError("--part and --num-parts split the subjects of a dataset folder: pass one folder")
    for inp in inputs:  # cheap checks before loading any model
        if not inp.exists():
            hint = "" if inp.suffix else f"; if {inp.name!r} was meant as a --to target, it is not a modality name"
            raise UsageError(f"input {inp} does not exist: check the path{hint}")
    plan = plan_outputs(inputs, targets, out_dir)
    for folder in sorted({p.parent for outs in plan.values() for p in outs.values()}):
        check_writable(folder, "choose another --out-dir" if out_dir is not None else "pass --out-dir")
    # what an earlier run of this same command wrote (its records say so) is already done
    request = {"model": model, "revision": revision, "source": source_name, "precision": precision,
               "output_dtype": output_dtype, **sampling.as_record(),
               **({"skull_strip": True} if skull_strip else {}), **({"uncertainty": kind} if uncertainty else {})}
    done = {inp: [] if overwrite else [t for t, p in plan[inp].items() if _already_done(p, inp, t, request)]
            for inp in inputs}
    if not (overwrite or skip_existing or continue_on_error):
        for inp in inputs:
            other = [p for t, p in plan[inp].items() if p.exists() and t not in done[inp]]
            if other:
                raise OutputExistsError(f"{other[0]} exists: pass --overwrite to replace it or --skip-existing to resume")
    n_done = sum(len(d) for d in done.values())
    if n_done and not quiet:
        typer.echo(f"{n_done} output{'s' if n_done != 1 else ''} already done by an earlier run of this command "
                   f"(kept; --overwrite redoes them): {', '.join(str(plan[i][t]) for i in inputs for t in done[i])}",
                   err=True)
    todo = [inp for inp in inputs if len(done[inp]) < len(plan[inp])]
    if not todo:
        return EXIT_OK
    loaded = load_translator(model, revision, token, offline, device, precision, max_memory, sampling, allow_skull,
                             compile_unet, progress=not quiet, skull_strip=skull_strip)
    if uncertainty:
        loaded.check_uncertainty()  # the model's default samples, before any input is read
    failures: list[tuple[Path, str]] = []
    bar = tqdm(todo, desc="volumes", unit="vol", disable=quiet or len(todo) == 1)
    for inp in bar:
        outs = {t: p for t, p in plan[inp].items() if t not in done[inp]}
        try:
            existing = [p for p in outs.values() if p.exists() or (uncertainty and sd_path(p).exists())]
            if existing and skip_existing and len(existing) == len(outs):
                logger.info("skipping %s: outputs exist", inp)
                continue
            if existing and not overwrite and not skip_existing:
                raise OutputExistsError(f"{existing[0]} exists: pass --overwrite to replace it or --skip-existing to resume")
            bound = loaded(inp, source=source)
            wanted = [t for t, p in outs.items() if overwrite or not p.exists()]
            result = bound.to(*wanted, uncertainty=kind)
            result, spread = result if uncertainty else (result, None)
            images = result if isinstance(result, dict) else {wanted[0]: result}
            sds = {} if spread is None else spread if isinstance(spread, dict) else {wanted[0]: spread}
            record = {**bound.run_record(wanted, uncertainty=kind), "input": str(inp), **input_provenance(inp),
                      **output_record(output_dtype), "request": request}
            if bound.brain_mask is not None:  # the same input always gives the same mask: rewritten freely
                mask = save_image(bound.brain_mask, output_path(inp, "brainmask", out_dir), overwrite=True,
                                  inputs=inputs)
                record["brain_mask"] = str(mask)
            for t, own in per_target(record, wanted).items():
                if t in sds:
                    own["sd_file"] = str(save_image(as_output_dtype(sds[t], output_dtype), sd_path(outs[t]),
                                                    overwrite=overwrite, inputs=inputs))
                path = save_image(as_output_dtype(images[t], output_dtype), outs[t], overwrite=overwrite, inputs=inputs)
                write_json_atomic(path.with_name(path.name[: -len(".nii.gz")] + ".json"), own)
                if not quiet:
                    tqdm.write(f"wrote {path}")
        except Exception as exc:  # noqa: BLE001 - with --continue-on-error one input's failure never stops the batch
            if not continue_on_error:
                raise
            logger.debug("%s failed", inp, exc_info=True)  # the traceback, with --debug
            what = "" if isinstance(exc, MRTranslateError) else f"{type(exc).__name__}: "
            failures.append((inp, what + " ".join(str(exc).split())))
            tqdm.write(f"error: {inp}: {failures[-1][1]}", file=sys.stderr)
    if failures:
        typer.echo(f"{len(failures)} of {len(todo)} input{'s' if len(todo) != 1 else ''} failed:", err=True)
        for inp, msg in failures:
            typer.echo(f"  {inp}: {msg}", err=True)
        return EXIT_ERROR
    return EXIT_OK


def _already_done(out: Path, inp: Path, target: str, request: dict[str, Any]) -> bool:
    """``out`` exists and its record says this same command wrote it: same input bytes, target, model and
    settings (the ``request`` of the command line, before a model's defaults fill it in)."""
    from ..provenance import sha256_file

    side = out.with_name(out.name[: -len(".nii.gz")] + ".json")
    if not (out.is_file() and side.is_file() and inp.is_file()):  # a DICOM folder has no one hash: made again
        return False
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(record, dict) and record.get("request") == request and record.get("target") == target
            and record.get("input_sha256") == sha256_file(inp))


def _refiner_info(pipe: Any) -> dict[str, Any] | None:
    """What the detail refiner refines, where it runs, and its guided transfer's settings where it has one."""
    if pipe.refiner is None:
        return None
    c = pipe.refiner.config
    info: dict[str, Any] = {"targets": [m for m in pipe.modalities if c.refines(m)],
                            "max_input_spacing_mm": c.max_input_spacing_mm}
    if c.guides_any:
        info["network_targets"] = [m for m in pipe.modalities if c.net_refines(m)]
        info["guided_transfer"] = {"sigma_mm": c.guide_sigma_mm, "eps": c.guide_eps,
                                   "targets": [m for m in pipe.modalities if c.guides(m)]}
    return info


def _best_sources(pipe: Any) -> dict[str, str]:
    """Per target, the source `complete` prefers: the model's best_source, else the first of the default order."""
    from ..pipeline.best_source import ranked_sources

    mods = list(pipe.modalities)
    return {t: ranked_sources(t, mods, pipe.config.best_source)[0] for t in mods if len(mods) > 1}


@app.command("info")
def info_command(
    model: Optional[str] = typer.Argument(None, help="Hub repo id, model folder or bundled name (default: the bundled brats-2mm)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Summarise a model: modalities, voxel spacing, grid, network sizes, sampling defaults, the best source per
    target (`complete`; the model's own where it names one, else the default order) and its card's title."""
    from ..hub import resolve_model
    from ..pipeline import ALDMPipeline

    resolved = resolve_model(model, revision=revision, local_files_only=offline, progress=False)
    pipe = ALDMPipeline.from_pretrained(resolved.path)
    p = pipe.config.preprocessing
    card = resolved.path / "README.md"
    title = next((ln.lstrip("# ").strip() for ln in card.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "") if card.is_file() else ""
    info = {
        "model": str(resolved.repo_id or resolved.path),
        "source": resolved.source,
        "revision": resolved.revision,
        "title": title,
        "modalities": list(pipe.modalities),
        "spacing_mm": p["spacing_mm"],
        "grid": p["grid"],
        "components": list(pipe.config.components),
        "vqgan_parameters": sum(t.numel() for t in pipe.vqgan.parameters()),
        "unet_parameters": sum(t.numel() for t in pipe.unet.parameters()) if pipe.unet is not None else 0,
        "default_steps": pipe.config.default_steps,
        "default_eta": pipe.config.default_eta,
        "default_strength": pipe.config.default_strength,
        "pair_strength": pipe.config.pair_strength,
        "default_samples": pipe.config.default_samples,
        "best_source": _best_sources(pipe),
        "default_solver": pipe.config.default_solver,
        "output_standard": sorted(pipe.config.output_standard.get("landmarks", {})),
        "detail_refiner": _refiner_info(pipe),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    for k, v in info.items():
        if v is not None:  # e.g. the revision of a model that is not from the Hub
            typer.echo(f"{k:>18}: {v}")
