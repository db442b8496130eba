"""Training checkpoints without pickle: one safetensors file of tensors whose header carries the scalars as JSON.

Tensors (network weights, optimizer moments, EMA weights) are safetensors entries; everything else (step,
elapsed seconds, optimizer hyper-parameters and parameter-group layout, the config) is a JSON document
stored in the file's metadata and mirrored to ``state.json`` for people to read. One file holds both, so
writing it to a temporary name and ``os.replace``-ing it over the previous one is atomic: a crash at any
moment leaves the previous or the new checkpoint, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import ModelFormatError

FORMAT_VERSION = 1
STATE_FILE = "state.safetensors"
STATE_JSON = "state.json"
_META_KEY = "mrtranslate_training"


def _fsync_replace(tmp: Path, dst: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> Path:
    """Atomically write ``folder/state.safetensors`` (and the readable copy ``state.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    scalars = {"format_version": FORMAT_VERSION, **scalars}
    text = json.dumps(scalars, sort_keys=True)
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path = folder / STATE_FILE
    tmp = folder / (STATE_FILE + ".tmp")
    save_file(cpu, str(tmp), metadata={_META_KEY: text})
    _fsync_replace(tmp, path)
    tmp_json = folder / (STATE_JSON + ".tmp")
    tmp_json.write_text(json.dumps(scalars, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_json, folder / STATE_JSON)
    return path


def load_checkpoint(folder: Path, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (those whose names start with ``prefix``) and scalars of ``folder/state.safetensors``."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise ModelFormatError(f"no checkpoint at {path}: the run has not saved one yet")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"checkpoint {path} is not readable ({exc}): it is damaged") from None
    try:
        scalars = json.loads(meta[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFormatError(f"checkpoint {path} has no mrtranslate training header: not a training checkpoint") from None
    if scalars.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFormatError(f"checkpoint {path} is from a newer mrtranslate: upgrade (pip install -U mrtranslate)")
    return tensors, scalars


def read_scalars(folder: Path) -> dict[str, Any]:
    """Only the JSON header of a checkpoint (cheap: no tensor is read)."""
    path = folder / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})[_META_KEY])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"checkpoint {path} is not readable ({exc})") from None


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Load the ``prefix/*`` tensors into ``module`` (strict; values copied into the existing parameters)."""
    start = prefix + "/"
    state = {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
    expected = module.state_dict()
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))[:3]
        extra = sorted(set(state) - set(expected))[:3]
        raise ModelFormatError(
            f"{origin}: the {prefix} weights do not match the configured network (missing {missing}, unexpected {extra})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelFormatError(f"{origin}: {prefix}/{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    with torch.no_grad():
        for k, dst in expected.items():
            dst.copy_(state[k])


def optimizer_state(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as tensors ``optim/<name>/<param index>/<key>`` plus JSON-safe scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{idx}/{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state": plain}


def load_optimizer_state(
    name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any], origin: str
) -> None:
    """Restore what :func:`optimizer_state` saved; moment tensors take each parameter's device and memory format."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        idx_text, field = key[len(prefix) :].split("/", 1)
        idx = int(idx_text)
        if idx >= len(params):
            raise ModelFormatError(f"{origin}: optimizer {name} state names parameter {idx} of {len(params)}")
        p = params[idx]
        if value.shape == p.shape and value.dim() > 0:
            restored = torch.empty_like(p)  # keeps the parameter's memory format (channels_last_3d)
            restored.copy_(value)
        else:
            restored = value
        state.setdefault(idx, {})[field] = restored
    for idx_text, entry in scalars.get("state", {}).items():
        state.setdefault(int(idx_text), {}).update(entry)
    groups = []
    for g in scalars["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise ModelFormatError(f"{origin}: optimizer {name} state does not fit ({exc})") from None
