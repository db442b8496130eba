"""The model folder: ``model_index.json`` plus one subfolder per component (``config.json`` and
``model.safetensors``: ``vqgan``, and ``unet`` with ``scheduler``, and ``refiner`` where the model has one),
and ``README.md``, the model card. JSON and safetensors only; never pickle.

``ALDMPipeline.from_pretrained`` and ``save_pretrained`` are thin over :func:`load_pipeline` and
:func:`save_pipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelFormatError
from ..models import VQGAN, UNet, UNetConfig, VQGANConfig
from ..models.config import ModelConfig
from ..models.refiner import Refiner, RefinerConfig
from ..schedulers import DDIMScheduler, SchedulerConfig
from .config import PipelineConfig
from .runtime import Runtime

if TYPE_CHECKING:
    from .aldm import ALDMPipeline

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INDEX_NAME = "model_index.json"


#: JSON files in a model folder are a few kB; anything far larger is not ours and is not read into memory.
MAX_JSON_BYTES = 16 << 20


def read_model_json(path: Path, origin: str | None = None) -> dict[str, Any]:
    """A model folder's JSON object; missing, oversized, unparsable or non-object files are ModelFormatError."""
    origin = origin or str(path)
    if not path.is_file():
        raise ModelFormatError(f"{origin} is missing: the model folder is incomplete (re-download or re-export it)")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ModelFormatError(f"{origin} is {size} bytes, far larger than a config: the model folder is corrupted")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{origin} is not valid JSON ({exc}): the model folder is corrupted") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{origin} must hold a JSON object, not {type(data).__name__}")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``module`` in float32; missing, unexpected or mis-shaped tensors are errors naming them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"unknown {len(unexpected)} tensors ({', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})")
        raise ModelFormatError(f"{origin}: tensors do not match the model's configuration: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelFormatError(f"{origin}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module`` (see ``load_state_strict``)."""
    if not path.is_file():
        raise ModelFormatError(f"model folder is missing {path}: re-download or re-export the model")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not a readable safetensors file ({exc}): re-download it") from None
    load_state_strict(module, state, f"{path} (with its config.json)")


def _save_weights(module: nn.Module, path: Path) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _load_config(cls: type[ModelConfig], path: Path) -> Any:
    return cls.from_dict(read_model_json(path), origin=str(path))


def load_pipeline(
    cls: type[ALDMPipeline],
    folder: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    runtime: Runtime | None = None,
) -> ALDMPipeline:
    """Read a model folder into ``cls`` (see ``ALDMPipeline.from_pretrained``); every config is validated
    before any network is allocated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder} is not a model folder (no such directory)")
    config = _load_config(PipelineConfig, folder / INDEX_NAME)
    vq_cfg = _load_config(VQGANConfig, folder / "vqgan" / CONFIG_NAME)
    unet_cfg = sched_cfg = None
    if config.has_diffusion:
        unet_cfg = _load_config(UNetConfig, folder / "unet" / CONFIG_NAME)
        sched_cfg = _load_config(SchedulerConfig, folder / "scheduler" / CONFIG_NAME)
        _check_compatible(config, vq_cfg, unet_cfg, folder)
    ref_cfg = None
    if config.has_refiner:
        ref_cfg = _load_config(RefinerConfig, folder / "refiner" / CONFIG_NAME)
        if ref_cfg.num_classes != len(config.modalities):
            raise ModelFormatError(f"{folder}: the refiner's {ref_cfg.num_classes} classes do not match the "
                                   f"{len(config.modalities)} modalities")
        foreign = [t for t in ref_cfg.targets if t not in config.modalities]
        if foreign:
            raise ModelFormatError(f"{folder}: the refiner's targets {', '.join(foreign)} are not modalities of the "
                                   f"model ({', '.join(config.modalities)})")
    vqgan = VQGAN(vq_cfg)
    _load_weights(vqgan, folder / "vqgan" / WEIGHTS_NAME)
    unet = scheduler = refiner = None
    if unet_cfg is not None:
        unet = UNet(unet_cfg)
        _load_weights(unet, folder / "unet" / WEIGHTS_NAME)
        scheduler = DDIMScheduler(sched_cfg)
    if ref_cfg is not None:
        refiner = Refiner(ref_cfg)
        _load_weights(refiner, folder / "refiner" / WEIGHTS_NAME)
    pipe = cls(vqgan, unet, scheduler, config, refiner)
    if runtime is not None:
        pipe.configure(runtime)
    else:
        pipe.to(device=device, dtype=dtype)
    return pipe


def save_pipeline(pipe: ALDMPipeline, folder: str | Path, model_card: str | None = None) -> Path:
    """Write ``pipe`` as a model folder (see ``ALDMPipeline.save_pretrained``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / INDEX_NAME, pipe.config.to_dict())
    (folder / "vqgan").mkdir(exist_ok=True)
    _write_json(folder / "vqgan" / CONFIG_NAME, pipe.vqgan.config.to_dict())
    _save_weights(pipe.vqgan, folder / "vqgan" / WEIGHTS_NAME)
    if pipe.unet is not None and pipe.scheduler is not None:
        (folder / "unet").mkdir(exist_ok=True)
        _write_json(folder / "unet" / CONFIG_NAME, pipe.unet.config.to_dict())
        _save_weights(pipe.unet, folder / "unet" / WEIGHTS_NAME)
        (folder / "scheduler").mkdir(exist_ok=True)
        _write_json(folder / "scheduler" / CONFIG_NAME, pipe.scheduler.config.to_dict())
    if pipe.refiner is not None:
        save_refiner(pipe.refiner, folder)
    if model_card is not None or not (folder / "README.md").exists():
        (folder / "README.md").write_text(model_card or default_model_card(pipe.config), encoding="utf-8")
    return folder


def save_refiner(refiner: Refiner, folder: str | Path) -> Path:
    """Write ``refiner`` as the ``refiner`` component of the model folder ``folder`` (config and weights)."""
    path = Path(folder) / "refiner"
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / CONFIG_NAME, refiner.config.to_dict())
    _save_weights(refiner, path / WEIGHTS_NAME)
    return path


def default_model_card(config: PipelineConfig) -> str:
    """A minimal model card, for folders saved without one."""
    c = config
    p = c.preprocessing
    lines = [
        f"# {c.name or 'ALDM model'}",
        "",
        "An Adaptive Latent Diffusion Model (Kim & Park, WACV 2024) folder for "
        "[mrtranslate](https://pypi.org/project/mrtranslate/).",
        "",
        f"- modalities: {', '.join(c.modalities)}",
        f"- voxel spacing: {p['spacing_mm']} mm, grid: {p['grid']} (RAS)",
        f"- components: {', '.join(c.components)}",
        f"- default sampling: {c.sampling_summary()}",
    ]
    return "\n".join(lines) + "\n"


def _check_compatible(config: PipelineConfig, vq: VQGANConfig, unet: UNetConfig, folder: Path) -> None:
    if unet.in_channels != 3 * vq.embed_dim or unet.out_channels != vq.embed_dim:
        raise ModelFormatError(
            f"{folder}: UNet in/out channels {unet.in_channels}/{unet.out_channels} do not fit the VQ-GAN's "
            f"embed_dim {vq.embed_dim} (expected {3 * vq.embed_dim}/{vq.embed_dim})"
        )
    if unet.num_classes != len(config.modalities) or vq.num_classes != len(config.modalities):
        raise ModelFormatError(f"{folder}: class counts of the networks do not match the {len(config.modalities)} modalities")
