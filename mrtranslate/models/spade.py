"""MS-SPADE: switchable SPADE residual blocks that map a source latent to a target-like latent.

Each normalisation is a list of SPADE layers, one per target modality; sample ``i`` of a batch uses
the layer of its own target class. The modulation is computed from the features themselves (there is
no external segmentation map in ALDM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv3d


class SPADE(nn.Module):
    """InstanceNorm(x) * (1 + gamma(x)) + beta(x); gamma, beta from a 3x3x3 conv MLP of x."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.mlp_shared = nn.Sequential(conv3d(channels, hidden), nn.ReLU())
        self.mlp_gamma = conv3d(hidden, channels)
        self.mlp_beta = conv3d(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x.float(), eps=1e-5).to(x.dtype)
        actv = self.mlp_shared(x)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SwitchableSPADE(nn.Module):
    """One SPADE layer per class; each sample is normalised by the layer of its class."""

    def __init__(self, num_classes: int, channels: int, hidden: int):
        super().__init__()
        self.spades = nn.ModuleList(SPADE(channels, hidden) for _ in range(num_classes))

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if classes.numel() and bool((classes == classes[0]).all()):
            return self.spades[int(classes[0])](x)
        out = torch.empty_like(x)
        # group by class: instance norm is per sample, so running a group at once is exact
        for c in classes.unique().tolist():
            idx = (classes == c).nonzero(as_tuple=True)[0]
            out[idx] = self.spades[c](x[idx])
        return out


class SPADEResBlock(nn.Module):
    """shortcut(x) + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x)))))); 1x1x1 bias-free shortcut when widths differ."""

    def __init__(self, fin: int, fout: int, num_classes: int, hidden: int):
        super().__init__()
        fmid = min(fin, fout)
        self.conv_0 = conv3d(fin, fmid)
        self.conv_1 = conv3d(fmid, fout)
        self.conv_s = conv3d(fin, fout, 1, bias=False) if fin != fout else None
        self.norm_0 = SwitchableSPADE(num_classes, fin, hidden)
        self.norm_1 = SwitchableSPADE(num_classes, fmid, hidden)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, classes), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, classes), 0.2))
        return (x if self.conv_s is None else self.conv_s(x)) + dx


class SPADEGenerator(nn.Module):
    """Four switchable SPADE residual blocks, widths z -> nf -> 2nf -> nf -> z.

    ``source_gate`` (not published; off for the published model) adds one weight per (source, target, channel),
    ``source_gate[s, t]``, that moves the output of a pair towards its source latent:
    ``out = y + source_gate[s, t] * (z - y)`` with ``y`` the blocks' output. It starts at 0 (the blocks alone)
    and trains with the stage's latent L1, so a pair whose target latent is closer to the source latent than
    the shared blocks can get (T1 <-> T1ce, which differ only where a tumour enhances) learns to keep it.
    Such a model needs the source class of every sample.
    """

    def __init__(self, num_classes: int = 4, z_dim: int = 4, nf: int = 128, hidden: int = 64, source_gate: bool = False):
        super().__init__()
        widths = [z_dim, nf, 2 * nf, nf, z_dim]
        self.block = nn.ModuleList(
            SPADEResBlock(widths[i], widths[i + 1], num_classes, hidden) for i in range(4)
        )
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.source_gate: nn.Parameter | None = None
        if source_gate:
            self.add_source_gate()

    def add_source_gate(self) -> None:
        """Add the source gate at 0 (the same outputs until it trains), beside the blocks; nothing if it exists."""
        if self.source_gate is None:
            ref = next(self.block.parameters())
            shape = (self.num_classes, self.num_classes, self.z_dim)
            self.source_gate = nn.Parameter(torch.zeros(shape, device=ref.device, dtype=ref.dtype))

    def forward(self, z: torch.Tensor, classes: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        classes = classes.to(device=z.device, dtype=torch.long).reshape(-1)
        if classes.numel() != z.shape[0]:
            raise ValueError(f"got {classes.numel()} target classes for a batch of {z.shape[0]} latents")
        if self.source_gate is not None:
            if sources is None:
                raise ValueError("this MS-SPADE has a source gate: it needs the source class of every sample")
            sources = sources.to(device=z.device, dtype=torch.long).reshape(-1)
            if sources.numel() == 1:
                sources = sources.expand(z.shape[0])
            if sources.numel() != z.shape[0]:
                raise ValueError(f"got {sources.numel()} source classes for a batch of {z.shape[0]} latents")
        y = z
        for blk in self.block:
            y = blk(y, classes)
        if self.source_gate is None:
            return y
        gate = self.source_gate[sources, classes].to(y.dtype)  # [B, C]
        gate = gate.reshape(*gate.shape, *(1,) * (y.dim() - 2))
        return y + gate * (z.to(y.dtype) - y)
