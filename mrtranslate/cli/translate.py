"""`mrtranslate INPUT ... --to t2 flair`: the main job, thin over Translator."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from tqdm.auto import tqdm

from ..errors import MRTranslateError, OutputExistsError, UsageError
from .app import EXIT_ERROR, EXIT_OK, app

logger = logging.getLogger("mrtranslate.cli")

_NIFTI = (".nii.gz", ".nii")


def output_path(inp: Path, target: str, out_dir: Path | None) -> Path:
    """``<input stem>_<target>.nii.gz`` beside the input, or in ``out_dir``."""
    name = inp.name
    for ext in _NIFTI:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return (out_dir or inp.parent) / f"{name}_{target}.nii.gz"


@app.command("translate")
def translate_command(
    inputs: List[Path] = typer.Argument(..., help="Input NIfTI volumes (.nii / .nii.gz), one or more.", show_default=False),
    to: List[str] = typer.Option(..., "--to", help="Target modalities: t1, t1ce, t2, flair (aliases: t1n t1c t2w t2f, T1w T2w FLAIR)."),
    source: Optional[str] = typer.Option(None, "--source", help="Source modality; guessed from the file name (e.g. _T1w, _t1n) when omitted."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub repo id org/name[@rev], model folder, or bundled name. Default: the bundled demo model."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Folder for outputs (default: beside each input)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: the model's, e.g. 200 for the published model)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta: 0 deterministic, 1 as the authors sample (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical outputs."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB (default: what is free)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose outputs all exist (resume a batch)."),
    continue_on_error: bool = typer.Option(False, "--continue-on-error", help="Go on with the other inputs after a failure; summary at the end."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files (like HF_HUB_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, no messages on success."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> int:
    """Translate each INPUT into the --to modalities; writes <input>_<target>.nii.gz and a .json record beside it.

    Outputs overlay the input exactly (same grid, affine, qform/sform); intensities are in [0, 1], where
    [0, 1] is the target's 0.5th..99.5th percentile range, and 0 outside the input's brain (voxels > 0).
    """
    from ..modalities import canonical, canonical_list
    from ..translator import Translator
    from ..volumes import save_image

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: pick one")
    targets = canonical_list(to)
    if source is not None:
        canonical(source)  # an unknown name fails before any work
    for inp in inputs:  # cheap checks before loading any model
        if not inp.exists():
            raise UsageError(f"input {inp} does not exist: check the path")
    loaded = Translator.from_pretrained(
        model, revision=revision, local_files_only=offline, device=device, dtype=precision,
        max_memory=max_memory, steps=steps, eta=eta, seed=seed, progress=not quiet,
    )
    failures: list[tuple[Path, str]] = []
    done = 0
    bar = tqdm(inputs, desc="volumes", unit="vol", disable=quiet or len(inputs) == 1)
    for inp in bar:
        outs = {t: output_path(inp, t, out_dir) for t in targets}
        try:
            existing = [p for p in outs.values() if p.exists()]
            if existing and skip_existing and len(existing) == len(outs):
                logger.info("skipping %s: outputs exist", inp)
                continue
            if existing and not overwrite and not skip_existing:
                raise OutputExistsError(f"{existing[0]} exists: pass --overwrite to replace it or --skip-existing to resume")
            bound = loaded(inp, source=source)
            wanted = [t for t, p in outs.items() if overwrite or not p.exists()]
            result = bound.to(*wanted)
            images = result if isinstance(result, dict) else {wanted[0]: result}
            record = bound.run_record(wanted)
            record["input"] = str(inp)
            for t, img in images.items():
                path = save_image(img, outs[t], overwrite=overwrite, inputs=[inp])
                path.with_name(path.name[: -len(".nii.gz")] + ".json").write_text(
                    json.dumps({**record, "target": t}, indent=2) + "\n", encoding="utf-8"
                )
                if not quiet:
                    tqdm.write(f"wrote {path}")
            done += 1
        except MRTranslateError as exc:
            if not continue_on_error:
                raise
            failures.append((inp, " ".join(str(exc).split())))
            tqdm.write(f"error: {inp}: {failures[-1][1]}")
    if failures:
        typer.echo(f"{len(failures)} of {len(inputs)} inputs failed:", err=True)
        for inp, msg in failures:
            typer.echo(f"  {inp}: {msg}", err=True)
        return EXIT_ERROR
    return EXIT_OK


@app.command("info")
def info_command(
    model: Optional[str] = typer.Argument(None, help="Hub repo id, model folder or bundled name (default: the bundled demo model)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision."),
    offline: bool = typer.Option(False, "--offline", help="Use only cached Hub files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Summarise a model: modalities, voxel spacing, grid, network sizes, sampling defaults and its card's title."""
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
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    for k, v in info.items():
        typer.echo(f"{k:>18}: {v}")
