"""Small building blocks shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are always computed in float32 (fp16 variance under/overflows).

    ``fp32_stats`` mirrors guided-diffusion's ``GroupNorm32``; the VQ-GAN's norms behave the same
    under autocast because autocast runs ``group_norm`` in float32 anyway.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def conv3d(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None, bias: bool = True) -> nn.Conv3d:
    if padding is None:
        padding = kernel // 2
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 along every spatial axis (the same values the published code produces)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# Along one axis, output voxel o = 2i + p of "nearest x2, then a 3-tap 'same' convolution w" reads the
# upsampled voxels o - 1, o, o + 1, i.e. input voxels (i - 1, i, i) for p = 0 and (i, i, i + 1) for p = 1.
# That is a transposed convolution of the input, stride 2, padding 1, with the 4-tap kernel
# K = (w2, w1 + w2, w0 + w1, w0) (out[o] = sum_i x[i] K[o + 1 - 2i]): row k' of _FOLD says which taps of w
# add up to K[k']. In 3D the kernel is that map on each axis: 64 taps per input voxel instead of the
# 8 x 27 = 216 per input voxel of the convolution at the upsampled size, with the same zero padding.
_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def fold_upsample_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The ``conv_transpose3d`` weight ``[C_in, C_out, 4, 4, 4]`` equivalent to nearest x2 followed by a 3x3x3
    convolution of weight ``[C_out, C_in, 3, 3, 3]`` (padding 1)."""
    a = torch.tensor(_FOLD, dtype=weight.dtype, device=weight.device)
    k = torch.einsum("ad,be,cf,oidef->ioabc", a, a, a, weight)
    return k.contiguous(memory_format=torch.channels_last_3d) if weight.is_contiguous(
        memory_format=torch.channels_last_3d) and not weight.is_contiguous() else k.contiguous()


def upsample_conv(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(upsample_nearest2x(x))`` for a 3x3x3 stride-1 convolution with padding 1, computed exactly (up to
    float rounding) as one stride-2 transposed convolution of ``x`` (see ``_FOLD``): about 3x fewer
    multiply-adds, and the upsampled input is never materialised."""
    weight = fold_upsample_conv_weight(conv.weight).to(x.dtype)
    bias = conv.bias.to(x.dtype) if conv.bias is not None else None
    return F.conv_transpose3d(x, weight, bias, stride=2, padding=1)


def can_fold_upsample(conv: nn.Conv3d) -> bool:
    """Whether ``upsample_conv`` computes ``conv`` after nearest x2 (3x3x3, stride 1, padding 1, no groups)."""
    return (conv.kernel_size == (3, 3, 3) and conv.stride == (1, 1, 1) and conv.padding == (1, 1, 1)
            and conv.dilation == (1, 1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos, sin]`` order (guided-diffusion).

    freqs_i = max_period ** (-i / half), i = 0..half-1; odd ``dim`` is padded with one zero column.
    """
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
