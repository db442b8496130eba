"""Convert the authors' PyTorch Lightning checkpoints into an mrtranslate model folder.

Checkpoints are opened with ``torch.load(weights_only=True)``: tensors and plain values only. A
checkpoint that needs full unpickling (which can execute code from the file) is refused unless the
caller explicitly trusts it. What the tensor shapes determine (channels, levels, codebook size, class
count) is read from them; the rest (VQ-GAN GroupNorm groups, attention head width, schedule) comes
from the authors' yaml config when given, else from the published defaults.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFormatError, UnsafeCheckpointError, UsageError
from .models import VQGAN, UNet, UNetConfig, VQGANConfig
from .pipeline import ALDMPipeline, PipelineConfig, load_state_strict
from .schedulers import DDIMScheduler, SchedulerConfig

logger = logging.getLogger(__name__)

#: Buffers of the authors' LatentDiffusion that describe the schedule (recomputed by us, then checked).
_SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar", "scale_factor", "model_ema.decay", "model_ema.num_updates",
}


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a plain state dict file)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that only full unpickling can open, and unpickling can execute "
                f"code from the file ({str(exc).splitlines()[0][:120]}); if you trust where it came from, "
                "rerun with --trust-pickle"
            ) from None
        logger.warning("loading %s with full unpickling (--trust-pickle)", path)
        obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - explicit user opt-in
    except Exception as exc:  # noqa: BLE001 - torch's unpickler raises many types on garbage input
        raise ModelFormatError(f"{path} is not a readable PyTorch checkpoint ({exc}): check the file") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelFormatError(f"{path} has no state_dict of tensors: is it a Lightning checkpoint of ALDM?")
    return state


def read_official_yaml(path: str | Path) -> dict[str, Any]:
    """The parts of an authors' LDM / VQ-GAN yaml config that shapes cannot tell."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the config {path} ({exc}): pass the authors' yaml file") from None
    params = (doc or {}).get("model", {}).get("params", {})
    if not isinstance(params, dict):
        raise UsageError(f"{path} has no model.params section: pass the authors' yaml file")
    out: dict[str, Any] = {}
    unet = params.get("unet_config", {}).get("params", {})
    first = params.get("first_stage_config", {}).get("params", {}) if "first_stage_config" in params else params
    dd = first.get("ddconfig", {})
    if "num_groups" in dd:
        out["vq_num_groups"] = int(dd["num_groups"])
    if first.get("ddconfig", {}).get("attn_resolutions"):
        raise ModelFormatError(f"{path}: VQ-GAN attention (attn_resolutions) is not part of ALDM and not supported")
    if "num_head_channels" in unet:
        out["num_head_channels"] = int(unet["num_head_channels"])
    if "num_heads" in unet:
        out["num_heads"] = int(unet["num_heads"])
    if unet.get("use_scale_shift_norm") or unet.get("use_spatial_transformer") or unet.get("use_new_attention_order"):
        raise ModelFormatError(f"{path}: UNet options beyond the published ALDM design are not supported")
    for k_src, k_dst in (("linear_start", "beta_start"), ("linear_end", "beta_end"), ("timesteps", "num_train_timesteps")):
        if k_src in params:
            out[k_dst] = params[k_src]
    if "scale_factor" in params:
        out["scale_factor"] = float(params["scale_factor"])
    return out


def _count(state: dict[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for k in state for m in [pat.match(k)] if m})


def infer_vqgan_config(state: dict[str, torch.Tensor], num_groups: int = 32) -> VQGANConfig:
    """VQ-GAN config from the shapes of ``encoder.* / decoder.* / quantize.* / spade.*`` tensors."""
    try:
        ch = state["encoder.conv_in.weight"].shape[0]
        levels = _count(state, "encoder.down.")
        mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        n_classes = _count(state, "spade.block.0.norm_0.spades.")
        if n_classes == 0:
            raise ModelFormatError(
                "the VQ-GAN checkpoint has no spade.* tensors: it is a stage-1 checkpoint; "
                "convert the stage-2 (MS-SPADE) checkpoint instead"
            )
        cfg = VQGANConfig(
            in_channels=state["encoder.conv_in.weight"].shape[1],
            out_channels=state["decoder.conv_out.weight"].shape[0],
            ch=ch,
            ch_mult=mult,
            num_res_blocks=_count(state, "encoder.down.0.block."),
            z_channels=state["encoder.conv_out.weight"].shape[0],
            embed_dim=state["quant_conv.weight"].shape[0],
            n_embed=state["quantize.embedding.weight"].shape[0],
            num_groups=num_groups,
            num_classes=n_classes,
            spade_nf=state["spade.block.0.conv_1.weight"].shape[0],
            spade_hidden=state["spade.block.0.norm_0.spades.0.mlp_shared.0.weight"].shape[0],
        )
    except KeyError as exc:
        raise ModelFormatError(f"the VQ-GAN checkpoint lacks tensor {exc}: is it an ALDM VQ-GAN checkpoint?") from None
    try:
        cfg.validate("VQ-GAN checkpoint")
    except ModelFormatError as exc:
        raise ModelFormatError(f"{exc}; pass the authors' yaml config with --config to set num_groups") from None
    return cfg


def infer_unet_config(state: dict[str, torch.Tensor], num_head_channels: int = 32, num_heads: int = -1) -> UNetConfig:
    """UNet config from the shapes and block layout of ``input_blocks.* / output_blocks.* / out.*`` tensors."""
    try:
        mc, cin = state["input_blocks.0.0.weight"].shape[:2]
        n_in = _count(state, "input_blocks.")
        downs = [i for i in range(n_in) if f"input_blocks.{i}.0.op.weight" in state]
        n_res = (downs[0] - 1) if downs else n_in - 1
        mult: list[int] = []
        attn: list[int] = []
        for level in range(len(downs) + 1):
            first = 1 + level * (n_res + 1)
            mult.append(state[f"input_blocks.{first}.0.in_layers.2.weight"].shape[0] // mc)
            if f"input_blocks.{first}.1.qkv.weight" in state:
                attn.append(2**level)
        cfg = UNetConfig(
            in_channels=cin,
            out_channels=state["out.2.weight"].shape[0],
            model_channels=mc,
            channel_mult=tuple(mult),
            num_res_blocks=n_res,
            attention_resolutions=tuple(sorted(attn, reverse=True)),
            num_head_channels=num_head_channels,
            num_heads=num_heads,
            num_classes=state["label_emb.weight"].shape[0] if "label_emb.weight" in state else 0,
        )
    except KeyError as exc:
        raise ModelFormatError(f"the LDM checkpoint lacks UNet tensor {exc}: is it an ALDM LDM checkpoint?") from None
    cfg.validate("LDM checkpoint")
    return cfg


def _split_ldm(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict, dict]:
    raw, ema, first, other = {}, {}, {}, {}
    for k, v in state.items():
        if k.startswith("model.diffusion_model."):
            raw[k[len("model.diffusion_model."):]] = v
        elif k.startswith("model_ema.") and k not in _SCHEDULE_BUFFERS:
            ema[k[len("model_ema."):]] = v
        elif k.startswith("first_stage_model."):
            first[k[len("first_stage_model."):]] = v
        else:
            other[k] = v
    unknown = sorted(k for k in other if k not in _SCHEDULE_BUFFERS and not k.startswith("cond_stage_model."))
    if unknown:
        raise ModelFormatError(f"the LDM checkpoint has keys mrtranslate does not know: {', '.join(unknown[:8])}")
    return raw, ema, first, other


def _ema_state(unet: UNet, ema: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map LitEma names (``diffusion_model`` + parameter name with the dots removed) to our names."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[str, str] = {}
    for name, _ in unet.named_parameters():
        key = ("diffusion_model." + name).replace(".", "")
        if key in seen:
            raise ModelFormatError(
                f"EMA names are ambiguous ({seen[key]} and {name} both become {key}); convert with --weights raw"
            )
        seen[key] = name
        if key not in ema:
            raise ModelFormatError(f"the LDM checkpoint has no EMA weight for {name}; convert with --weights raw")
        out[name] = ema[key]
    extra = sorted(set(ema) - set(seen))
    if extra:
        raise ModelFormatError(f"the LDM checkpoint has unknown EMA tensors: {', '.join(extra[:5])}")
    for name, buf in unet.named_buffers():
        out[name] = buf
    return out


def _scheduler_config(other: dict[str, torch.Tensor], hints: dict[str, Any]) -> SchedulerConfig:
    betas = other.get("betas")
    T = int(hints.get("num_train_timesteps", betas.numel() if betas is not None else 1000))
    start = hints.get("beta_start", float(f"{float(betas[0]):.6g}") if betas is not None else 0.0015)
    end = hints.get("beta_end", float(f"{float(betas[-1]):.6g}") if betas is not None else 0.0195)
    scale = float(other["scale_factor"]) if "scale_factor" in other else float(hints.get("scale_factor", 1.0))
    if abs(scale - 1.0) > 1e-6:
        raise ModelFormatError(f"scale_factor {scale} is not supported: ALDM uses unscaled latents (1.0)")
    cfg = SchedulerConfig(num_train_timesteps=T, beta_start=float(start), beta_end=float(end))
    cfg.validate("LDM schedule")
    if betas is not None:
        ours = DDIMScheduler(cfg).betas
        if ours.shape != betas.shape or not torch.allclose(ours, betas.double(), rtol=1e-5, atol=1e-9):
            raise ModelFormatError(
                "the checkpoint's betas are not the sqrt-linear schedule of ALDM "
                f"(start {start}, end {end}); pass the authors' yaml with --config"
            )
    return cfg


def convert_checkpoints(
    vqgan: str | Path | None = None,
    ldm: str | Path | None = None,
    *,
    config: str | Path | None = None,
    weights: str = "ema",
    trust_pickle: bool = False,
    pipeline_config: PipelineConfig | None = None,
) -> ALDMPipeline:
    """Build a pipeline from the authors' checkpoints.

    ``vqgan``: stage-2 VQ-GAN checkpoint (encoder, decoder, quantizer, MS-SPADE). ``ldm``: LDM training
    checkpoint; its ``first_stage_model.*`` is used when ``vqgan`` is not given. ``weights``: ``ema``
    (default: the authors sample with the EMA weights) or ``raw``.
    """
    if vqgan is None and ldm is None:
        raise UsageError("give a VQ-GAN checkpoint (--vqgan), an LDM checkpoint (--ldm), or both")
    if weights not in ("ema", "raw"):
        raise UsageError(f"--weights {weights!r}: use 'ema' or 'raw'")
    hints = read_official_yaml(config) if config is not None else {}

    ldm_parts = _split_ldm(load_checkpoint(ldm, trust_pickle=trust_pickle)) if ldm is not None else None
    if vqgan is not None:
        vq_state = {k: v for k, v in load_checkpoint(vqgan, trust_pickle=trust_pickle).items() if not k.startswith("loss.")}
    else:
        vq_state = {k: v for k, v in ldm_parts[2].items() if not k.startswith("loss.")}
        if not vq_state:
            raise ModelFormatError("the LDM checkpoint holds no first_stage_model.* tensors: pass --vqgan too")
    vq_cfg = infer_vqgan_config(vq_state, num_groups=hints.get("vq_num_groups", 32))
    vq = VQGAN(vq_cfg)
    load_state_strict(vq, vq_state, "VQ-GAN checkpoint")
    if ldm_parts is not None and vqgan is not None and ldm_parts[2]:
        first = {k: v for k, v in ldm_parts[2].items() if not k.startswith("loss.")}
        same = set(first) == set(vq_state) and all(torch.equal(first[k].float(), vq_state[k].float()) for k in first)
        if not same:
            raise ModelFormatError(
                "the LDM checkpoint was trained on a different first stage than --vqgan; "
                "omit --vqgan to use the LDM's own first stage"
            )

    pcfg = pipeline_config or PipelineConfig()
    if ldm_parts is None:
        pcfg.components = ("vqgan",)
        return ALDMPipeline(vq, config=pcfg)

    raw, ema, _, other = ldm_parts
    unet_cfg = infer_unet_config(raw, hints.get("num_head_channels", 32), hints.get("num_heads", -1))
    unet = UNet(unet_cfg)
    state = raw if weights == "raw" else _ema_state(unet, ema) if ema else None
    if state is None:
        raise ModelFormatError("the LDM checkpoint has no EMA weights (model_ema.*): convert with --weights raw")
    load_state_strict(unet, state, f"LDM checkpoint ({weights} weights)")
    sched = DDIMScheduler(_scheduler_config(other, hints))
    pcfg.components = ("vqgan", "unet", "scheduler")
    if unet_cfg.num_classes != vq_cfg.num_classes:
        raise ModelFormatError(f"UNet has {unet_cfg.num_classes} classes, MS-SPADE {vq_cfg.num_classes}")
    return ALDMPipeline(vq, unet, sched, pcfg)


def convert_to_folder(out: str | Path, **kwargs: Any) -> Path:
    """``convert_checkpoints`` then ``save_pretrained(out)``; returns the folder."""
    pipe = convert_checkpoints(**kwargs)
    return pipe.save_pretrained(out)
