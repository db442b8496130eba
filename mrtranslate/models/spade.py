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
    """Four switchable SPADE residual blocks, widths z -> nf -> 2nf -> nf -> z."""

    def __init__(self, num_classes: int = 4, z_dim: int = 4, nf: int = 128, hidden: int = 64):
        super().__init__()
        widths = [z_dim, nf, 2 * nf, nf, z_dim]
        self.block = nn.ModuleList(
            SPADEResBlock(widths[i], widths[i + 1], num_classes, hidden) for i in range(4)
        )
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        classes = classes.to(device=z.device, dtype=torch.long).reshape(-1)
        if classes.numel() != z.shape[0]:
            raise ValueError(f"got {classes.numel()} target classes for a batch of {z.shape[0]} latents")
        for blk in self.block:
            z = blk(z, classes)
        return z
