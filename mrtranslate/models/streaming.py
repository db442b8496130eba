"""Exact slab-wise execution of the VQ-GAN encoder and decoder, for bounded memory.

The full-resolution layers of the VQ-GAN dominate peak memory: every 3x3x3 convolution materialises
its normalised input, its output, and (on CPU) an im2col-style workspace many times the activation.
Here each convolution runs over slabs along the first spatial axis with a one-voxel halo, the
GroupNorm + SiLU in front of it is applied to each input slab on the fly, nearest-neighbour upsampling
is fused into the following convolution, and identity residuals are added in place. Every GroupNorm
still uses statistics of the WHOLE tensor (a reduction pass before the layer), so the result equals
the plain forward pass up to float rounding, with no seams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .vqgan import VQGAN, Decoder, Downsample, Encoder, ResnetBlock, Upsample

Pre = Callable[[torch.Tensor], torch.Tensor] | None


def group_norm_affine(x: torch.Tensor, norm: nn.GroupNorm, slab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel (scale, shift) such that ``norm(x) == x * scale + shift``.

    Mean and variance of each group are taken over the whole tensor in two slab-wise passes
    (mean, then centred squares) accumulated in float64.
    """
    b, c, d = x.shape[:3]
    g = norm.num_groups
    n = (c // g) * x[0, 0].numel()
    total = torch.zeros(b, g, dtype=torch.float64, device=x.device)
    for d0 in range(0, d, slab):
        t = x[:, :, d0 : d0 + slab].float().contiguous().view(b, g, -1)
        total += t.sum(-1, dtype=torch.float64)
    mean = total / n
    sq = torch.zeros_like(total)
    mean32 = mean.float()
    for d0 in range(0, d, slab):
        t = x[:, :, d0 : d0 + slab].float().contiguous().view(b, g, -1)
        sq += (t - mean32[:, :, None]).square().sum(-1, dtype=torch.float64)
    rstd = (sq / n + norm.eps).rsqrt()
    per_ch = c // g
    rstd_c = rstd.repeat_interleave(per_ch, dim=1)
    mean_c = mean.repeat_interleave(per_ch, dim=1)
    w = norm.weight.double() if norm.weight is not None else torch.ones(c, dtype=torch.float64, device=x.device)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros(c, dtype=torch.float64, device=x.device)
    scale = rstd_c * w
    shift = bias - mean_c * scale
    return scale.float(), shift.float()


def norm_silu(x: torch.Tensor, norm: nn.GroupNorm, slab: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that applies ``silu(norm(.))`` to any slab of ``x`` with ``x``'s global statistics."""
    scale, shift = group_norm_affine(x, norm, slab)
    sc = scale[:, :, None, None, None]
    sh = shift[:, :, None, None, None]

    def apply(s: torch.Tensor) -> torch.Tensor:
        return F.silu(s.float() * sc + sh).to(s.dtype)

    return apply


def _empty_like_layout(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    fmt = torch.channels_last_3d if (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
                                     and not x.is_contiguous()) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def conv_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int, pre: Pre = None, upsample: bool = False) -> torch.Tensor:
    """``conv(pre(x))`` (or ``conv(upsample2x(pre(x)))``) for a stride-1 convolution, computed slab by slab.

    ``pre`` must be pointwise (it is applied to input slabs including their halo).
    """
    k, p = conv.kernel_size[0], conv.padding[0]
    if conv.stride != (1, 1, 1) or conv.kernel_size[0] != conv.kernel_size[1] or 2 * p != k - 1:
        raise ValueError("conv_slabs handles 'same' convolutions with stride 1")
    b, _, d, h, w = x.shape
    scale = 2 if upsample else 1
    out_d = d * scale
    out = _empty_like_layout(x, (b, conv.out_channels, out_d, h * scale, w * scale))
    for o0 in range(0, out_d, slab):
        o1 = min(out_d, o0 + slab)
        lo, hi = o0 - p, o1 + p  # rows of the (upsampled) input this output slab needs
        src_lo, src_hi = max(lo, 0), min(hi, out_d)
        if upsample:
            xs = x[:, :, src_lo // 2 : (src_hi + 1) // 2]
            xs = pre(xs) if pre is not None else xs
            xs = F.interpolate(xs, scale_factor=2.0, mode="nearest")
            xs = xs[:, :, src_lo - 2 * (src_lo // 2) : src_lo - 2 * (src_lo // 2) + (src_hi - src_lo)]
        else:
            xs = x[:, :, src_lo:src_hi]
            xs = pre(xs) if pre is not None else xs
        if lo < src_lo or hi > src_hi:
            xs = F.pad(xs, (0, 0, 0, 0, src_lo - lo, hi - src_hi))
        out[:, :, o0:o1] = F.conv3d(xs, conv.weight, conv.bias, padding=(0, p, p))
    return out


def pointwise_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int) -> torch.Tensor:
    out = _empty_like_layout(x, (x.shape[0], conv.out_channels, *x.shape[2:]))
    for d0 in range(0, x.shape[2], slab):
        out[:, :, d0 : d0 + slab] = conv(x[:, :, d0 : d0 + slab])
    return out


def downsample_slabs(down: Downsample, x: torch.Tensor, slab: int) -> torch.Tensor:
    """Zero-pad one voxel at the end of each axis, then the stride-2 3x3x3 convolution, slab by slab."""
    conv = down.conv
    b, _, d, h, w = x.shape
    out_d, out_h, out_w = ((n + 1 - 3) // 2 + 1 for n in (d, h, w))
    out = _empty_like_layout(x, (b, conv.out_channels, out_d, out_h, out_w))
    for o0 in range(0, out_d, slab):
        o1 = min(out_d, o0 + slab)
        lo, hi = 2 * o0, 2 * (o1 - 1) + 3  # rows of the padded input
        xs = x[:, :, lo : min(hi, d)]
        xs = F.pad(xs, (0, 1, 0, 1, 0, hi - min(hi, d)))
        out[:, :, o0:o1] = F.conv3d(xs, conv.weight, conv.bias, stride=2)
    return out


def resnet_block(blk: ResnetBlock, x: torch.Tensor, slab: int) -> torch.Tensor:
    h = conv_slabs(blk.conv1, x, slab, pre=norm_silu(x, blk.norm1, slab))
    pre2 = norm_silu(h, blk.norm2, slab)
    if blk.nin_shortcut is None:
        # identity skip: the output can overwrite x slab by slab (conv2 reads only h)
        p = blk.conv2.padding[0]
        d = h.shape[2]
        for o0 in range(0, d, slab):
            o1 = min(d, o0 + slab)
            lo, hi = max(o0 - p, 0), min(o1 + p, d)
            hs = F.pad(pre2(h[:, :, lo:hi]), (0, 0, 0, 0, lo - (o0 - p), (o1 + p) - hi))
            x[:, :, o0:o1] += F.conv3d(hs, blk.conv2.weight, blk.conv2.bias, padding=(0, p, p))
        return x
    out = conv_slabs(blk.conv2, h, slab, pre=pre2)
    del h
    for d0 in range(0, x.shape[2], slab):
        out[:, :, d0 : d0 + slab] += blk.nin_shortcut(x[:, :, d0 : d0 + slab])
    return out


def decode(vqgan: VQGAN, z: torch.Tensor, slab: int = 8) -> torch.Tensor:
    """``vqgan.decode(z)`` with bounded memory. Modifies no input; exact up to float rounding."""
    dec: Decoder = vqgan.decoder
    h = pointwise_slabs(vqgan.post_quant_conv, z, slab)
    h = conv_slabs(dec.conv_in, h, slab)
    h = resnet_block(dec.mid.block_1, h, slab)
    for level in reversed(dec.up):
        for blk in level.block:
            h = resnet_block(blk, h, slab)
        if level.resample_name is not None:
            up: Upsample = getattr(level, level.resample_name)
            h = conv_slabs(up.conv, h, slab, upsample=True)
    return conv_slabs(dec.conv_out, h, slab, pre=norm_silu(h, dec.norm_out, slab))


def encode_continuous(vqgan: VQGAN, x: torch.Tensor, slab: int = 8) -> torch.Tensor:
    """``vqgan.encode_continuous(x)`` (before quantization) with bounded memory."""
    enc: Encoder = vqgan.encoder
    h = conv_slabs(enc.conv_in, x, slab)
    for level in enc.down:
        for blk in level.block:
            h = resnet_block(blk, h, slab)
        if level.resample_name is not None:
            h = downsample_slabs(getattr(level, level.resample_name), h, slab)
    h = resnet_block(enc.mid.block_1, h, slab)
    h = conv_slabs(enc.conv_out, h, slab, pre=norm_silu(h, enc.norm_out, slab))
    return pointwise_slabs(vqgan.quant_conv, h, slab)
