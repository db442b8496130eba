"""Loss terms of the three stages (as the authors' released code trains)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vqgan import Encoder


def codebook_loss(z_e: torch.Tensor, z_q: torch.Tensor, beta: float) -> torch.Tensor:
    """``||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2`` (the published "legacy" order), as means."""
    z_e = z_e.float()
    z_q = z_q.float()
    return F.mse_loss(z_q, z_e.detach()) + beta * F.mse_loss(z_e, z_q.detach())


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """PatchGAN hinge loss of the discriminator: ``(mean relu(1 - D(x)) + mean relu(1 + D(G(x)))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean D(G(x))``."""
    return -logits_fake.float().mean()


def adaptive_gan_weight(grad_rec: torch.Tensor, grad_gan: torch.Tensor, scale: float) -> torch.Tensor:
    """taming-transformers' balance: ``||dL_rec/dw|| / (||dL_gan/dw|| + 1e-4)``, clamped to [0, 1e4], times ``scale``.

    ``w`` is the decoder's last layer; the gradients are passed in so that under DDP they can first be
    averaged over processes (then the weight equals the single-process weight of the whole batch).
    """
    w = grad_rec.norm() / (grad_gan.norm() + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * scale


def class_cross_entropy(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), classes.to(logits.device).long())


class EncoderFeatures(nn.Module):
    """Perceptual network: the (frozen) feature maps of a VQ-GAN encoder, one per level plus the middle block."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> EncoderFeatures:
        return super().train(False)  # always in eval mode: a fixed feature extractor

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc = self.encoder
        h = enc.conv_in(x)
        feats = []
        for level in enc.down:
            for block in level.block:
                h = block(h)
            feats.append(h)
            if level.resample_name is not None:
                h = getattr(level, level.resample_name)(h)
        feats.append(enc.mid(h))
        return feats


def _unit_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def perceptual_loss(features: EncoderFeatures, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance without learned weights: per level, squared difference of channel-normalised
    features summed over channels and averaged over voxels; summed over levels. Gradients flow to ``y``."""
    with torch.no_grad():
        fx = features(x)
    fy = features(y)
    total = torch.zeros((), device=y.device, dtype=torch.float32)
    for a, b in zip(fx, fy, strict=True):
        total = total + (_unit_channels(a.float()) - _unit_channels(b.float())).pow(2).sum(dim=1).mean()
    return total
