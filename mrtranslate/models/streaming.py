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

from .layers import can_fold_upsample, fold_upsample_conv_weight
from .vqgan import VQGAN, Decoder, Downsample, Encoder, ResnetBlock, Upsample

Pre = Callable[[torch.Tensor], torch.Tensor] | None


def group_norm_affine(x: torch.Tensor, norm: nn.GroupNorm, slab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel (scale, shift) such that ``norm(x) == x * scale + shift``.

    Mean and variance of each group are taken over the whole tensor in ONE slab-wise pass: each slab's
    per-channel sum and sum of squares (float32 sums, which vectorise over the channels in either memory
    layout; a Welford ``var_mean`` is about 3x slower on CPU), turned into the slab's mean and sum of squared
    deviations in float64, combined across slabs and then across the channels of a group with Chan et al.'s
    pairwise formula (exact up to rounding).
    """
    b, c, d = x.shape[:3]
    g = norm.num_groups
    k = c // g
    seen = 0
    mean = torch.zeros(b, c, dtype=torch.float64, device=x.device)
    m2 = torch.zeros(b, c, dtype=torch.float64, device=x.device)  # sums of squared deviations
    square = None  # one slab-sized buffer for the squares
    dims = (2, 3, 4)
    for d0 in range(0, d, slab):
        part = x[:, :, d0 : d0 + slab].float()
        n = part[0, 0].numel()
        if square is None:
            square = torch.empty_like(part)
        sq = square[:, :, : part.shape[2]]
        torch.mul(part, part, out=sq)
        s1 = part.sum(dim=dims).double()
        mean_s = s1 / n
        m2_s = (sq.sum(dim=dims).double() - s1 * mean_s).clamp_min(0.0)
        delta = mean_s - mean
        total = seen + n
        mean += delta * (n / total)
        m2 += m2_s + delta.square() * (seen * n / total)
        seen = total
    mean_c = mean.view(b, g, k)
    mean_g = mean_c.mean(-1)
    var_g = (m2.view(b, g, k).sum(-1) + seen * (mean_c - mean_g[..., None]).square().sum(-1)) / (seen * k)
    rstd_c = (var_g + norm.eps).rsqrt().repeat_interleave(k, dim=1)
    mean_gc = mean_g.repeat_interleave(k, dim=1)
    w = norm.weight.double() if norm.weight is not None else torch.ones(c, dtype=torch.float64, device=x.device)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros(c, dtype=torch.float64, device=x.device)
    scale = rstd_c * w
    shift = bias - mean_gc * scale
    return scale.float(), shift.float()


def norm_silu(x: torch.Tensor, norm: nn.GroupNorm, slab: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that applies ``silu(norm(.))`` to any slab of ``x`` with ``x``'s global statistics."""
    scale, shift = group_norm_affine(x, norm, slab)
    sc = scale[:, :, None, None, None]
    sh = shift[:, :, None, None, None]

    def apply(s: torch.Tensor) -> torch.Tensor:
        return F.silu(torch.addcmul(sh, s.float(), sc), inplace=True).to(s.dtype)

    return apply


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


def _empty_like_layout(x: torch.Tensor, shape: tuple[int, ...], fmt: torch.memory_format | None = None) -> torch.Tensor:
    """An empty tensor in ``fmt``, by default in ``x``'s layout."""
    if fmt is None:
        fmt = torch.channels_last_3d if _is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _layout_of(module: nn.Module) -> torch.memory_format:
    """The memory format the module's weights are in, read from its first convolution with several input
    channels (a one-channel input or weight is contiguous in both formats and tells nothing)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d) and m.in_channels > 1:
            return torch.channels_last_3d if _is_channels_last(m.weight) else torch.contiguous_format
    return torch.contiguous_format


def _same_conv_rows(conv: nn.Conv3d, xs: torch.Tensor, src_lo: int, o0: int, o1: int, pad_top: int, pad_bot: int) -> torch.Tensor:
    """Rows ``[o0, o1)`` of a 'same' convolution whose input rows ``[src_lo, src_lo + len)`` are in ``xs``.

    Missing rows at the volume's borders are the convolution's own zero padding (no padded copy).
    """
    p = conv.padding[0]
    pd = max(pad_top, pad_bot)
    y = F.conv3d(xs, conv.weight, conv.bias, padding=(pd, p, p))
    j0 = o0 - src_lo + pd - p
    return y[:, :, j0 : j0 + (o1 - o0)]


def _check_same(conv: nn.Conv3d) -> int:
    k, p = conv.kernel_size[0], conv.padding[0]
    if conv.stride != (1, 1, 1) or conv.kernel_size != (k, k, k) or 2 * p != k - 1:
        raise ValueError("slab-wise execution handles 'same' convolutions with stride 1")
    return p


def _slab_rows(conv: nn.Conv3d, x: torch.Tensor, o0: int, o1: int, pre: Pre, upsample: bool) -> torch.Tensor:
    """Output rows ``[o0, o1)`` of ``conv(pre(x))`` or ``conv(upsample2x(pre(x)))``."""
    p = conv.padding[0]
    full = x.shape[2] * (2 if upsample else 1)
    src_lo, src_hi = max(o0 - p, 0), min(o1 + p, full)
    if upsample:
        xs = x[:, :, src_lo // 2 : (src_hi + 1) // 2]
        xs = F.interpolate(pre(xs) if pre is not None else xs, scale_factor=2.0, mode="nearest")
        off = src_lo - 2 * (src_lo // 2)
        xs = xs[:, :, off : off + (src_hi - src_lo)]
    else:
        xs = x[:, :, src_lo:src_hi]
        xs = pre(xs) if pre is not None else xs
    return _same_conv_rows(conv, xs, src_lo, o0, o1, src_lo - (o0 - p), (o1 + p) - src_hi)


def conv_slabs(
    conv: nn.Conv3d, x: torch.Tensor, slab: int, pre: Pre = None, upsample: bool = False,
    fmt: torch.memory_format | None = None,
) -> torch.Tensor:
    """``conv(pre(x))`` (or ``conv(upsample2x(pre(x)))``) for a stride-1 'same' convolution, slab by slab.

    ``pre`` must be pointwise (it is applied to input slabs including their halo). ``fmt``: the output's
    memory format (default: ``x``'s).
    """
    _check_same(conv)
    b, _, d, h, w = x.shape
    s = 2 if upsample else 1
    out = _empty_like_layout(x, (b, conv.out_channels, d * s, h * s, w * s), fmt)
    for o0 in range(0, d * s, slab):
        o1 = min(d * s, o0 + slab)
        out[:, :, o0:o1] = _slab_rows(conv, x, o0, o1, pre, upsample)
    return out


def upsample_conv_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int) -> torch.Tensor:
    """``conv(upsample2x(x))`` slab by slab, each slab one stride-2 transposed convolution of the low-resolution
    rows it needs (``layers.upsample_conv``): output rows [2a, 2b) read input rows a - 1 .. b (zeros beyond the
    volume). With those rows as the slab s (s[i] = x[a - 1 + i]) and no padding along the slab axis, the
    transposed convolution's row o' = sum_i s[i] K[o' - 2i] is the volume's row o = sum_j x[j] K[o + 1 - 2j]
    for o' = o - 2a + 3."""
    b_, _, d, h, w = x.shape
    out = _empty_like_layout(x, (b_, conv.out_channels, 2 * d, 2 * h, 2 * w))
    weight = fold_upsample_conv_weight(conv.weight).to(x.dtype)
    bias = conv.bias.to(x.dtype) if conv.bias is not None else None
    for o0 in range(0, 2 * d, slab):
        o1 = min(2 * d, o0 + slab)
        a, b = o0 // 2, (o1 + 1) // 2
        lo, hi = max(a - 1, 0), min(b + 1, d)
        xs = x[:, :, lo:hi]
        if lo > a - 1 or hi < b + 1:
            xs = F.pad(xs, (0, 0, 0, 0, lo - (a - 1), (b + 1) - hi))
        y = F.conv_transpose3d(xs, weight, bias, stride=2, padding=(0, 1, 1))
        j0 = o0 - 2 * a + 3
        out[:, :, o0:o1] = y[:, :, j0 : j0 + (o1 - o0)]
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
    """The block's forward; with an identity skip the result overwrites ``x`` slab by slab (conv2 reads h only)."""
    h = conv_slabs(blk.conv1, x, slab, pre=norm_silu(x, blk.norm1, slab))
    pre2 = norm_silu(h, blk.norm2, slab)
    d = h.shape[2]
    if blk.nin_shortcut is None:
        _check_same(blk.conv2)
        for o0 in range(0, d, slab):
            o1 = min(d, o0 + slab)
            x[:, :, o0:o1] += _slab_rows(blk.conv2, h, o0, o1, pre2, False)
        return x
    out = conv_slabs(blk.conv2, h, slab, pre=pre2)
    del h
    for d0 in range(0, d, slab):
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
            if up.fused and not up.training and can_fold_upsample(up.conv):
                h = upsample_conv_slabs(up.conv, h, slab)
            else:
                h = conv_slabs(up.conv, h, slab, upsample=True)
    return conv_slabs(dec.conv_out, h, slab, pre=norm_silu(h, dec.norm_out, slab))


def encode_continuous(vqgan: VQGAN, x: torch.Tensor, slab: int = 8) -> torch.Tensor:
    """``vqgan.encode_continuous(x)`` (before quantization) with bounded memory."""
    enc: Encoder = vqgan.encoder
    # the one-channel input is in both layouts at once: take the weights' layout for what follows
    h = conv_slabs(enc.conv_in, x, slab, fmt=_layout_of(enc))
    for level in enc.down:
        for blk in level.block:
            h = resnet_block(blk, h, slab)
        if level.resample_name is not None:
            h = downsample_slabs(getattr(level, level.resample_name), h, slab)
    h = resnet_block(enc.mid.block_1, h, slab)
    h = conv_slabs(enc.conv_out, h, slab, pre=norm_silu(h, enc.norm_out, slab))
    return pointwise_slabs(vqgan.quant_conv, h, slab)
