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
