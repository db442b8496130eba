"""The frozen first stage of the spade and diffusion stages, and the latents it makes of the data.

``first_stage`` is an autoencoder or spade run folder (its latest checkpoint) or a model folder. Its
VQ-GAN is copied into the new run's own checkpoints, so a run never depends on the upstream folder
again (which may move, or keep training). The data are encoded once, at the start, into codebook
indices (exact and 4x smaller than the latents), cached in memory and in ``RUN/latents-R-of-W.safetensors``
(one file per process under torchrun). The cache records a hash of the encoder, quantizer (and, where
used, MS-SPADE) weights and is only reused when the hash matches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ModelFormatError, UsageError
from ..models import VQGAN, VQGANConfig
from ..modalities import MODALITIES
from .checkpoint import load_checkpoint, load_module, read_scalars
from .data import ImageSet
from .runs import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class FirstStage:
    vqgan: VQGAN
    preprocessing: dict[str, Any]
    source: dict[str, Any]  # where it came from: path, kind (run or model), stage
    provenance: list[dict[str, Any]]  # summaries of the upstream runs, oldest first


def run_summary(run: RunFolder) -> dict[str, Any]:
    """What a model card says about one run: stage, commands, data, steps, wall time, final losses."""
    record = run.read_run()
    scalars = read_scalars(run.checkpoint_dir) if run.has_checkpoint() else {}
    step = scalars.get("step")
    return {
        "stage": record.get("stage"),
        "run": str(run.path.resolve()),
        "commands": record.get("commands", []),
        "data": record.get("data"),
        "first_stage": record.get("first_stage"),
        "init": record.get("init"),
        "step": step,
        "steps": scalars.get("config", {}).get("steps"),
        "elapsed_s": scalars.get("elapsed_s"),
        "metrics": run.last_metrics(upto=step),
        "config": scalars.get("config"),
    }


def model_path(path: Path | str) -> Path:
    """``path`` itself, or the bundled model folder of that name (e.g. ``phantom-demo``) where no such path exists."""
    from ..hub import BUNDLED_DIR, is_simple_name

    p = Path(path)
    if not p.exists() and is_simple_name(str(path)) and (BUNDLED_DIR / str(path) / "model_index.json").is_file():
        return BUNDLED_DIR / str(path)
    return p


def load_first_stage(path: Path | str) -> FirstStage:
    """The VQ-GAN (and its preprocessing) of an autoencoder/spade run folder, a model folder or a bundled model."""
    p = model_path(path)
    if (p / "model_index.json").is_file():
        from ..pipeline import ALDMPipeline

        pipe = ALDMPipeline.from_pretrained(p)
        source = {"path": str(p.resolve()), "kind": "model", "stage": "model", "name": pipe.config.name}
        return FirstStage(pipe.vqgan, dict(pipe.config.preprocessing), source, [dict(source)])
    run = RunFolder(p)
    if not run.is_run():
        raise UsageError(
            f"first_stage {p} is neither a training run folder (config.json, run.json) nor a model folder "
            "(model_index.json): pass the folder of an autoencoder or spade run"
        )
    if not run.has_checkpoint():
        raise UsageError(f"first_stage {p} has no checkpoint yet: train it first")
    record = run.read_run()
    stage = record.get("stage")
    if stage not in ("autoencoder", "spade"):
        raise UsageError(f"first_stage {p} is a {stage} run: pass an autoencoder or spade run")
    tensors, scalars = load_checkpoint(run.checkpoint_dir)
    origin = str(run.checkpoint_dir)
    try:
        vq_cfg = VQGANConfig.from_dict(scalars["vqgan_config"], origin=origin)
        prep = dict(scalars["preprocessing"])
    except KeyError as exc:
        raise ModelFormatError(f"{origin}: checkpoint lacks {exc}: not a first-stage checkpoint") from None
    vqgan = VQGAN(vq_cfg)
    load_module("model/vqgan", vqgan, tensors, origin)
    source = {"path": str(p.resolve()), "kind": "run", "stage": stage, "step": scalars.get("step")}
    provenance = list(record.get("provenance", [])) + [run_summary(run)]
    return FirstStage(vqgan, prep, source, provenance)


@torch.no_grad()
def encode_codes(vqgan: VQGAN, images: ImageSet, device: torch.device, progress: bool = True) -> torch.Tensor:
    """Codebook indices ``[N, M, d, h, w]`` (int32) of every available scan; -1 where a modality is missing."""
    vqgan.eval()
    f = vqgan.config.downsampling_factor
    grid = images.images.shape[2:]
    codes = torch.full((len(images), len(MODALITIES), *(g // f for g in grid)), -1, dtype=torch.int32)
    todo = images.available.nonzero().tolist()
    for n, m in tqdm(todo, desc="encoding", unit="scan", disable=not progress, leave=False):
        codes[n, m] = _codes_of(vqgan, images.images[n, m], device)
    return codes


def _codes_of(vqgan: VQGAN, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Codebook indices (int32, on the CPU) of one model-space scan ``[*grid]``."""
    x = image[None, None].to(device)
    return vqgan.quantize.codes(vqgan.encode_continuous(x))[0].to("cpu", torch.int32)


@torch.no_grad()
def translate_codes(
    vqgan: VQGAN, codes: torch.Tensor, available: torch.Tensor, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """MS-SPADE outputs ``[N, M(source), M(target), C, d, h, w]`` of every pair of available scans (else 0)."""
    vqgan.eval()
    n_sub, n_mod = available.shape
    out = torch.zeros((n_sub, n_mod, n_mod, vqgan.config.embed_dim, *codes.shape[2:]), dtype=torch.float32)
    pairs = [(n, s) for n, s in available.nonzero().tolist() if int(available[n].sum()) >= 2]
    for n, s in tqdm(pairs, desc="MS-SPADE", unit="scan", disable=not progress, leave=False):
        targets = [t for t in available[n].nonzero(as_tuple=True)[0].tolist() if t != s]
        z = vqgan.quantize.lookup(codes[n, s][None].long().to(device))
        y = vqgan.spade(z.expand(len(targets), *z.shape[1:]), torch.tensor(targets, device=device),
                        torch.tensor([s], device=device))
        out[n, s, targets] = y.to("cpu", torch.float32)
    return out


def cached(
    path: Path, key: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]], write: bool = True
) -> dict[str, torch.Tensor]:
    """Tensors from ``path`` when its metadata equals ``key``, else ``compute()`` (saved to ``path``)."""
    text = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") == text:
                    logger.info("using the cached latents in %s", path)
                    return {k: fh.get_tensor(k) for k in fh.keys()}
            logger.warning("%s was made by other first-stage weights or data: encoding again", path)
        except (SafetensorError, OSError, ValueError):
            logger.warning("%s is not readable: encoding again", path)
    tensors = compute()
    if write:
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": text})
        tmp.replace(path)
    return tensors


def check_latent_grid(prep: dict[str, Any], vq: VQGANConfig, unet_factor: int, origin: str) -> None:
    """The UNet halves the latent ``log2(unet_factor)`` times: the grid must be a multiple of both factors."""
    need = vq.downsampling_factor * unet_factor
    if any(int(g) % need for g in prep["grid"]):
        raise UsageError(
            f"{origin}: grid {prep['grid']} must be a multiple of {need} on every axis (VQ-GAN factor "
            f"{vq.downsampling_factor} x UNet factor {unet_factor}); train the first stage with such a grid"
        )
