"""Latent packs: a dataset encoded once by a first stage, in one small file that the spade and diffusion stages
train from instead of the images.

A pack holds the codebook indices of every scan of every subject (``codes`` ``[N, M, d, h, w]``, -1 where a
modality is missing; int16 when the codebook allows), which modalities each subject has (``available``), the
case names, and a key: the hash of the first stage's encoder and quantizer weights and the preprocessing. A
stage reads a pack only with a first stage of that key, so a pack can never train MS-SPADE or the UNet on
latents of other weights. A 2 mm dataset of 42 subjects packs into about 26 MB (about 8 MB xz-compressed),
against some 175 MB of NIfTI files: small enough to carry to a remote GPU, and nothing is encoded there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UsageError
from ..imaging.model_space import Preprocessing
from .data import dataset_subjects, describe_dataset, load_images
from .first_stage import FirstStage, encode_codes
from .stage import FIRST_STAGE_ENCODER, weights_hash

PACK_FORMAT = "mrtranslate-latent-pack/1"


def pack_key(first: FirstStage) -> dict[str, Any]:
    """What a pack's latents depend on: the encoder and quantizer weights, and the preprocessing."""
    prep = Preprocessing.from_dict(first.preprocessing)
    return {"weights": weights_hash(first.vqgan, FIRST_STAGE_ENCODER), "preprocessing": prep.to_dict()}


def is_pack(path: Path | str | None) -> bool:
    """Whether ``path`` names a pack file (a ``.safetensors`` file) rather than a dataset folder."""
    return path is not None and Path(path).suffix == ".safetensors" and not Path(path).is_dir()


def write_pack(
    data: Path | str, first: FirstStage, out: Path | str, device: torch.device, progress: bool = True
) -> dict[str, Any]:
    """Encode every subject of the dataset folder ``data`` (2+ modalities) with ``first`` into the pack ``out``."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: a pack is a .safetensors file; name it e.g. training.safetensors")
    if out.exists():
        raise UsageError(f"--out {out} exists: remove it or choose another name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    subjects = dataset_subjects(data, 2)
    images = load_images(subjects, Preprocessing.from_dict(first.preprocessing), progress=progress)
    codes = encode_codes(first.vqgan.to(device), images, device, progress)
    first.vqgan.to("cpu")
    if first.vqgan.config.n_embed <= torch.iinfo(torch.int16).max:
        codes = codes.to(torch.int16)
    info = describe_dataset(data, subjects)
    meta = {"format": PACK_FORMAT, "key": json.dumps(pack_key(first), sort_keys=True),
            "cases": json.dumps(images.cases), "data": json.dumps(info), "first_stage": json.dumps(first.source)}
    tmp = out.with_name(out.name + ".tmp")
    save_file({"codes": codes.contiguous(), "available": images.available.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"pack": str(out.resolve()), "n_subjects": len(images), "cases": images.cases, "data": info}


def read_pack(path: Path | str, first: FirstStage, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """The codes (int32), availability and case names of this process's share of the pack ``path``.

    Refused, in one line, when the pack was encoded by other first-stage weights or preprocessing.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--data {path}: no such pack file; make one with `mrtranslate train encode`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != PACK_FORMAT:
                raise UsageError(f"--data {path} is not a latent pack (made by `mrtranslate train encode`)")
            codes, available = fh.get_tensor("codes"), fh.get_tensor("available")
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"--data {path} is not readable as a latent pack ({exc})") from None
    if json.loads(meta["key"]) != pack_key(first):
        raise UsageError(
            f"--data {path} was encoded by another first stage or preprocessing than this run's: encode the data "
            "again with this run's --first-stage (`mrtranslate train encode`)"
        )
    cases = json.loads(meta["cases"])
    if len(cases) < world_size:
        raise UsageError(f"--data {path}: {len(cases)} subject(s) cannot be shared by {world_size} processes")
    return {
        "codes": codes[rank::world_size].to(torch.int32),
        "available": available[rank::world_size].bool(),
        "cases": cases[rank::world_size],
        "info": {"pack": str(path.resolve()), "n_subjects": len(cases), "cases": cases,
                 "data": json.loads(meta.get("data", "null"))},
    }
