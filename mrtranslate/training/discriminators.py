"""Discriminators: a 3D PatchGAN for the autoencoder and a multi-class latent discriminator for MS-SPADE."""

from __future__ import annotations

import torch
from torch import nn


class PatchGAN3D(nn.Module):
    """taming-transformers' ``NLayerDiscriminator`` with 3D convolutions: one logit per overlapping patch.

    conv4/s2 -> LeakyReLU, then ``layers - 1`` blocks conv4/s2 -> BatchNorm -> LeakyReLU (widths doubling up
    to 8x), one such block with stride 1, and a stride-1 conv4 to one channel. Initialised N(0, 0.02) as taming.
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv3d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv3d(channels * prev, channels * mult, 4, 2, 1, bias=False),
                nn.BatchNorm3d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**layers, 8)
        seq += [
            nn.Conv3d(channels * prev, channels * mult, 4, 1, 1, bias=False),
            nn.BatchNorm3d(channels * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(channels * mult, 1, 4, 1, 1),
        ]
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)

    @staticmethod
    def min_side(layers: int) -> int:
        """The smallest input side that leaves one output patch: ``layers`` halvings, then two convs that shrink by 1."""
        return 3 * 2**layers


class LatentDiscriminator(nn.Module):
    """Classifies a latent as one of ``num_classes`` modalities or as fake (class ``num_classes``).

    conv3 -> LeakyReLU, two conv4/s2 -> LeakyReLU (widths doubling), global average, linear to
    ``num_classes + 1`` logits; trained with cross-entropy on real target latents and MS-SPADE outputs.
    """

    def __init__(self, z_channels: int = 4, channels: int = 64, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(z_channels, channels, 3, 1, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(channels, 2 * channels, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(2 * channels, 4 * channels, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
        )
        self.classify = nn.Linear(4 * channels, num_classes + 1)
        self.fake_class = num_classes

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(z).mean(dim=(2, 3, 4)))


class RealFake(nn.Module):
    """Runs a discriminator on a real and a fake batch in ONE forward call (what DDP needs per backward)."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.disc(real), self.disc(fake)
