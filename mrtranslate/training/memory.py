"""The training memory planner: the peak of one training step, estimated before anything large is allocated.

The networks of a stage are built on PyTorch's ``meta`` device (shapes only, no storage) and one forward
pass of the step's batch runs there; every tensor autograd saves for the backward pass is counted. To that
come the weights with their gradients and Adam moments (and the EMA copy in the diffusion stage), the
backward pass's temporaries (about two of the largest saved activations) and, on the CPU, the preprocessed
images held in memory. A step that would not fit is refused with the estimate, what is available and the
settings to lower, instead of growing until the operating system kills the process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MemoryBudgetError, option
from ..pipeline.runtime import _size, available_memory, parse_memory

#: a small configuration to start from when the published one does not fit
SMALL_RECIPE = "recipes/phantom-demo/"


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated bytes of one training step: weights (with gradients, optimizer moments, EMA), the
    activations saved for the backward pass, its temporaries, and data held in the same memory."""

    weights: int
    activations: int
    temporaries: int
    data: int

    @property
    def peak(self) -> int:
        return self.weights + self.activations + self.temporaries + self.data


def _saved_bytes(forward: Callable[[], object]) -> tuple[int, int]:
    """(total, largest) bytes of the distinct tensors autograd saves while ``forward`` runs."""
    storages: dict[int, int] = {}
    keep: list[object] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        keep.append(storage)  # ids stay unique while the storages live
        storages[id(storage)] = max(storages.get(id(storage), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values()), max(storages.values(), default=0)


def _weight_bytes(module: nn.Module, copies: int) -> int:
    """Trainable parameters times ``copies`` (weights, gradients, Adam's two moments, ...) plus frozen ones."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return 4 * (trainable * copies + frozen)


def _scale(saved: int, half: bool) -> int:
    # under fp16/bf16 autocast most saved activations are 16-bit; GroupNorm and losses keep float32
    return int(saved * 0.6) if half else saved


def autoencoder_memory(model: dict, batch_size: int, crop: Sequence[int], disc: tuple[int, int] | None,
                       half: bool = False, data_bytes: int = 0) -> TrainingMemory:
    """The VQ-GAN step on ``batch_size`` crops (``disc``: the PatchGAN's (channels, layers) when it trains)."""
    from ..models import VQGAN, VQGANConfig
    from .discriminators import PatchGAN3D

    with torch.device("meta"):
        vqgan = VQGAN(VQGANConfig.from_dict(dict(model)))
        vqgan.spade.requires_grad_(False)
        x = torch.empty(batch_size, 1, *crop)
    weights = _weight_bytes(vqgan, 4)
    saved, largest = _saved_bytes(lambda: vqgan.decode(vqgan.encode_continuous(x)))
    if disc is not None:
        with torch.device("meta"):
            patch = PatchGAN3D(1, disc[0], disc[1])
        weights += _weight_bytes(patch, 4)
        extra, _ = _saved_bytes(lambda: patch(x))
        saved += 2 * extra  # the generator's pass and the discriminator's (real and fake)
    return TrainingMemory(weights, _scale(saved, half), 2 * _scale(largest, half), data_bytes)


def spade_memory(model: dict, batch_size: int, latent: Sequence[int], half: bool = False,
                 data_bytes: int = 0, image: Sequence[int] | None = None) -> TrainingMemory:
    """MS-SPADE's step on ``batch_size`` latents of shape ``latent``; ``image``: the latent crop that the
    image-space term decodes (with gradients to MS-SPADE), where it trains."""
    from ..models import VQGAN, VQGANConfig

    cfg = VQGANConfig.from_dict(dict(model))
    with torch.device("meta"):
        vqgan = VQGAN(cfg).requires_grad_(False)
        vqgan.spade.requires_grad_(True)
        z = torch.empty(batch_size, cfg.embed_dim, *latent)
    weights = _weight_bytes(vqgan, 4)

    def forward() -> torch.Tensor:  # the blocks as one class runs them (a meta tensor has no values to switch on)
        y = z
        for blk in vqgan.spade.block:
            dx = blk.conv_0(F.leaky_relu(blk.norm_0.spades[0](y), 0.2))
            dx = blk.conv_1(F.leaky_relu(blk.norm_1.spades[0](dx), 0.2))
            y = (y if blk.conv_s is None else blk.conv_s(y)) + dx
        return y

    saved, largest = _saved_bytes(forward)
    # twice: the cycle pass (when it trains) and the latent discriminator's passes are of the same order
    saved = 2 * saved
    if image is not None:
        with torch.device("meta"):
            crop = torch.empty(batch_size, cfg.embed_dim, *image).requires_grad_(True)
        decoded, decoded_largest = _saved_bytes(lambda: vqgan.decode(crop))
        saved += decoded
        largest = max(largest, decoded_largest)
    return TrainingMemory(weights, _scale(saved, half), 2 * _scale(largest, half), data_bytes)


def diffusion_memory(unet_model: dict, vq_model: dict, batch_size: int, latent: Sequence[int], half: bool = False,
                     data_bytes: int = 0) -> TrainingMemory:
    """The UNet's step on ``batch_size`` latents (or latent crops) of shape ``latent``; the VQ-GAN stays frozen."""
    from ..models import VQGAN, UNet, UNetConfig, VQGANConfig

    cfg = UNetConfig.from_dict(dict(unet_model))
    with torch.device("meta"):
        unet = UNet(cfg)
        vqgan = VQGAN(VQGANConfig.from_dict(dict(vq_model))).requires_grad_(False)
        x = torch.empty(batch_size, cfg.in_channels, *latent)
        t = torch.zeros(batch_size, dtype=torch.long)
    weights = _weight_bytes(unet, 5) + _weight_bytes(vqgan, 1)  # + the EMA copy
    saved, largest = _saved_bytes(lambda: unet(x, t, t))
    return TrainingMemory(weights, _scale(saved, half), 2 * _scale(largest, half), data_bytes)


def check_training_memory(estimate: TrainingMemory, device: torch.device, max_memory: int | str | None,
                          stage: str, lower: str) -> None:
    """Refuse (MemoryBudgetError) a step whose estimated peak exceeds what ``device`` has free (or
    ``max_memory``, when given and smaller). ``lower`` names the settings that shrink the step."""
    limit = parse_memory(max_memory)
    free = available_memory(device)
    budget = free if limit is None else min(free, limit)
    if estimate.peak <= budget:
        return
    where = "GPU memory" if device.type == "cuda" else "memory"
    capped = f" ({option('max_memory').rstrip('=')})" if limit is not None and limit < free else ""
    config = "--config" if option("config").startswith("--") else "the config"
    raise MemoryBudgetError(
        f"one {stage} training step needs about {_size(estimate.peak)} of {where} but only {_size(budget)} is "
        f"available{capped}: lower {lower} in {config}, or start from the small configs in {SMALL_RECIPE}"
    )


def latent_shape(grid: Sequence[int], factor: int) -> list[int]:
    return [int(g) // factor for g in grid]


def image_bytes(subjects: int, grid: Sequence[int], modalities: int = 4) -> int:
    """The preprocessed images of ``subjects`` kept in memory (float32)."""
    return subjects * modalities * int(math.prod(int(g) for g in grid)) * 4
