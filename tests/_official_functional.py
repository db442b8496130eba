"""An independent, functional re-implementation of the authors' ALDM forward computation.

Written from ../shared/reference/ALDM_FACTS.md and the key names of the authors' checkpoints only; nothing
here imports mrtranslate. Every network is a plain function over an authors'-format state dict (prefix
stripped, see ``sub``), built from ``torch.nn.functional``; the structure of each network is read from
the keys it holds. The DDIM sampler follows the LDM sampler the authors use, coefficients in NumPy.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
State = dict[str, Tensor]


# -- state dict helpers ---------------------------------------------------------------------------
def sub(state: State, prefix: str) -> State:
    """The tensors under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def indices(state: State, prefix: str) -> list[int]:
    """Sorted child indices ``i`` of keys ``prefix + "i." + ...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state for m in [pat.match(k)] if m})


def ema_unet_state(ldm_state: State) -> State:
    """The EMA UNet under the raw UNet's names: LitEma stores ``model_ema.`` + the wrapper's parameter
    name (``diffusion_model.<name>``) with every dot removed."""
    raw = sub(ldm_state, "model.diffusion_model.")
    return {k: ldm_state["model_ema." + ("diffusion_model." + k).replace(".", "")] for k in raw}


def _conv(x: Tensor, s: State, p: str, stride: int = 1, padding: int | None = None) -> Tensor:
    w = s[p + "weight"]
    pad = w.shape[-1] // 2 if padding is None else padding
    return F.conv3d(x, w, s.get(p + "bias"), stride=stride, padding=pad)


def _gn(x: Tensor, s: State, p: str, groups: int, eps: float) -> Tensor:
    return F.group_norm(x.float(), groups, s[p + "weight"], s[p + "bias"], eps).to(x.dtype)


def _up2(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 on the three spatial axes: every voxel repeated twice along each."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)


# -- first stage: taming-style 3D VQ-GAN -----------------------------------------------------------
_VQ_EPS = 1e-6


def _vq_resnet(x: Tensor, s: State, p: str, g: int) -> Tensor:
    h = _conv(F.silu(_gn(x, s, p + "norm1.", g, _VQ_EPS)), s, p + "conv1.")
    h = _conv(F.silu(_gn(h, s, p + "norm2.", g, _VQ_EPS)), s, p + "conv2.")
    skip = _conv(x, s, p + "nin_shortcut.") if p + "nin_shortcut.weight" in s else x
    return skip + h


def vq_encode(s: State, x: Tensor, num_groups: int) -> Tensor:
    """``quant_conv(encoder(x))``: the continuous latent z_e."""
    h = _conv(x, s, "encoder.conv_in.")
    for lvl in indices(s, "encoder.down."):
        p = f"encoder.down.{lvl}."
        for b in indices(s, p + "block."):
            h = _vq_resnet(h, s, f"{p}block.{b}.", num_groups)
        if p + "downsample.conv.weight" in s:
            h = _conv(F.pad(h, (0, 1, 0, 1, 0, 1)), s, p + "downsample.conv.", stride=2, padding=0)
    h = _vq_resnet(h, s, "encoder.mid.block_1.", num_groups)
    h = _conv(F.silu(_gn(h, s, "encoder.norm_out.", num_groups, _VQ_EPS)), s, "encoder.conv_out.")
    return _conv(h, s, "quant_conv.")


def vq_quantize(s: State, z_e: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook entry by squared distance (first index on ties): (z_q, codes [B, D, H, W])."""
    emb = s["quantize.embedding.weight"]
    z = z_e.permute(0, 2, 3, 4, 1)
    flat = z.reshape(-1, emb.shape[1])
    d = (flat**2).sum(1, keepdim=True) + (emb**2).sum(1)[None] - 2 * flat @ emb.t()
    codes = d.argmin(1)
    z_q = emb[codes].reshape(z.shape).permute(0, 4, 1, 2, 3).contiguous()
    return z_q, codes.reshape(z.shape[:-1])


def vq_decode(s: State, z: Tensor, num_groups: int) -> Tensor:
    """``decoder(post_quant_conv(z))``."""
    h = _conv(_conv(z, s, "post_quant_conv."), s, "decoder.conv_in.")
    h = _vq_resnet(h, s, "decoder.mid.block_1.", num_groups)
    for lvl in reversed(indices(s, "decoder.up.")):
        p = f"decoder.up.{lvl}."
        for b in indices(s, p + "block."):
            h = _vq_resnet(h, s, f"{p}block.{b}.", num_groups)
        if p + "upsample.conv.weight" in s:
            h = _conv(_up2(h), s, p + "upsample.conv.")
    return _conv(F.silu(_gn(h, s, "decoder.norm_out.", num_groups, _VQ_EPS)), s, "decoder.conv_out.")


# -- MS-SPADE ---------------------------------------------------------------------------------------
def _spade_norm(x: Tensor, s: State, p: str) -> Tensor:
    actv = F.relu(_conv(x, s, p + "mlp_shared.0."))
    gamma, beta = _conv(actv, s, p + "mlp_gamma."), _conv(actv, s, p + "mlp_beta.")
    return F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta


def spade(s: State, z: Tensor, classes: Tensor) -> Tensor:
    """SPADEGenerator: sample i goes through the SPADE layers of its own class ``classes[i]``."""
    outs = []
    for i, c in enumerate(classes.tolist()):
        x = z[i : i + 1]
        for b in indices(s, "spade.block."):
            p = f"spade.block.{b}."
            dx = _conv(F.leaky_relu(_spade_norm(x, s, f"{p}norm_0.spades.{c}."), 0.2), s, p + "conv_0.")
            dx = _conv(F.leaky_relu(_spade_norm(dx, s, f"{p}norm_1.spades.{c}."), 0.2), s, p + "conv_1.")
            x = (_conv(x, s, p + "conv_s.") if p + "conv_s.weight" in s else x) + dx
        outs.append(x)
    return torch.cat(outs)


# -- diffusion UNet (openaimodel design, 3D) --------------------------------------------------------
_UNET_GROUPS = 32  # guided-diffusion's normalization(): GroupNorm32(32, C), eps 1e-5, float32 statistics


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def _res_block(x: Tensor, emb: Tensor, s: State, p: str) -> Tensor:
    h = _conv(F.silu(_gn(x, s, p + "in_layers.0.", _UNET_GROUPS, 1e-5)), s, p + "in_layers.2.")
    e = F.linear(F.silu(emb), s[p + "emb_layers.1.weight"], s[p + "emb_layers.1.bias"])
    h = h + e[:, :, None, None, None]
    h = _conv(F.silu(_gn(h, s, p + "out_layers.0.", _UNET_GROUPS, 1e-5)), s, p + "out_layers.3.")
    skip = _conv(x, s, p + "skip_connection.") if p + "skip_connection.weight" in s else x
    return skip + h


def _attention(x: Tensor, s: State, p: str, heads: int) -> Tensor:
    """Legacy QKV attention: qkv channels head-major ([q|k|v] per head), softmax over all voxels."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(_gn(flat, s, p + "norm.", _UNET_GROUPS, 1e-5), s[p + "qkv.weight"], s[p + "qkv.bias"])
    d = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    scale = 1.0 / math.sqrt(math.sqrt(d))
    logits = torch.einsum("nct,ncs->nts", q * scale, k * scale).float()
    w = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    w = w / w.sum(dim=-1, keepdim=True)
    a = torch.einsum("nts,ncs->nct", w.to(v.dtype), v).reshape(b, c, -1)
    out = F.conv1d(a, s[p + "proj_out.weight"], s[p + "proj_out.bias"])
    return (flat + out).reshape(x.shape)


def _embed_sequential(h: Tensor, emb: Tensor, s: State, p: str, heads_of) -> Tensor:
    for j in indices(s, p):
        q = f"{p}{j}."
        if q + "weight" in s:  # input_blocks.0.0: the input conv
            h = _conv(h, s, q)
        elif q + "in_layers.0.weight" in s:
            h = _res_block(h, emb, s, q)
        elif q + "qkv.weight" in s:
            h = _attention(h, s, q, heads_of(h.shape[1]))
        elif q + "op.weight" in s:
            h = _conv(h, s, q + "op.", stride=2, padding=1)
        elif q + "conv.weight" in s:
            h = _conv(_up2(h), s, q + "conv.")
        else:
            raise KeyError(f"unknown UNet module at {q}")
    return h


def unet(s: State, x: Tensor, t: Tensor, y: Tensor | None, num_head_channels: int = -1, num_heads: int = -1) -> Tensor:
    """UNetModel.forward over a raw-named UNet state (``time_embed.*``, ``input_blocks.*``, ...)."""

    def heads_of(ch: int) -> int:
        return ch // num_head_channels if num_head_channels > 0 else num_heads

    temb = timestep_embedding(t, s["time_embed.0.weight"].shape[1])
    emb = F.linear(F.silu(F.linear(temb, s["time_embed.0.weight"], s["time_embed.0.bias"])),
                   s["time_embed.2.weight"], s["time_embed.2.bias"])
    if "label_emb.weight" in s:
        emb = emb + F.embedding(y, s["label_emb.weight"])
    hs = []
    h = x
    for i in indices(s, "input_blocks."):
        h = _embed_sequential(h, emb, s, f"input_blocks.{i}.", heads_of)
        hs.append(h)
    h = _embed_sequential(h, emb, s, "middle_block.", heads_of)
    for i in indices(s, "output_blocks."):
        h = _embed_sequential(torch.cat([h, hs.pop()], dim=1), emb, s, f"output_blocks.{i}.", heads_of)
    return _conv(F.silu(_gn(h, s, "out.0.", _UNET_GROUPS, 1e-5)), s, "out.2.")


# -- schedule and DDIM (LDM's DDIMSampler) -----------------------------------------------------------
def ldm_schedule(linear_start: float, linear_end: float, timesteps: int) -> dict[str, np.ndarray]:
    """DDPM.register_schedule's buffers for the 'linear' schedule (float64; stored as float32)."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    return {
        "betas": betas, "alphas_cumprod": acp, "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": np.sqrt(acp), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
        "log_one_minus_alphas_cumprod": np.log(1.0 - acp), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
    }


def ddim_parameters(alphas_cumprod: Tensor, steps: int, eta: float) -> dict[str, np.ndarray]:
    """make_ddim_timesteps('uniform') + make_ddim_sampling_parameters, on the float32 buffer.

    In LDM ``alphas`` is a float32 tensor and ``alphas_prev`` a float64 array; ``array / (1 - alphas)``
    goes through Tensor.__rtruediv__, i.e. a float32 reciprocal times the array: reproduced here.
    """
    acp = alphas_cumprod.to(torch.float32).numpy()
    T = acp.shape[0]
    ts = np.asarray(list(range(0, T, T // steps))) + 1
    alphas = acp[ts]
    alphas_prev = np.asarray([float(acp[0])] + acp[ts[:-1]].tolist(), dtype=np.float64)
    recip = (np.float32(1.0) / (np.float32(1.0) - alphas)).astype(np.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev) * recip * (1 - alphas.astype(np.float64) / alphas_prev))
    return {"timesteps": ts, "alphas": alphas.astype(np.float64), "alphas_prev": alphas_prev,
            "sigmas": sigmas, "sqrt_one_minus_alphas": np.sqrt(np.float32(1.0) - alphas)}


def ddim_sample(eps_fn, x_T: Tensor, alphas_cumprod: Tensor, steps: int, eta: float,
                noises: list[Tensor] | None = None) -> Tensor:
    """DDIMSampler.ddim_sampling: from the largest timestep down; ``noises[i]`` is the N(0, I) draw of the
    i-th update (needed when eta > 0). ``eps_fn(x, t)`` is the conditioned UNet. x0 is not clipped."""
    p = ddim_parameters(alphas_cumprod, steps, eta)
    n, b = len(p["timesteps"]), x_T.shape[0]
    x = x_T.float()
    for i, step in enumerate(np.flip(p["timesteps"])):
        index = n - i - 1

        def full(v: float) -> Tensor:
            return torch.full((b, 1, 1, 1, 1), float(v))

        e_t = eps_fn(x, torch.full((b,), int(step), dtype=torch.long))
        a_t, a_prev = full(p["alphas"][index]), full(p["alphas_prev"][index])
        sigma_t, sq1m = full(p["sigmas"][index]), full(p["sqrt_one_minus_alphas"][index])
        pred_x0 = (x - sq1m * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt
        if p["sigmas"][index] > 0:
            x = x + sigma_t * noises[i]
    return x
