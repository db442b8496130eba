"""Stage 2: MS-SPADE on the frozen first stage's quantized latents.

loss = l1_weight * |spade(z_src, target) - z_tgt| + adv_weight * CE(D(spade(z_src, target)), target)
       [+ cycle_weight * |spade(spade(z_src, target), source) - z_src|  (the paper's cycle term, off as published)]
       [+ image_l1_weight * |decode(spade(z_src, target)) - decode(z_tgt)| in the brain  (not published)]
D, the latent discriminator, learns CE(D(z_tgt), target) + CE(D(fake), "fake") (4 modalities + 1 class).
Only ``vqgan.spade.*`` is trained (with ``gate_only``, only the per-pair source gate that ``source_gate``
adds, models/spade.py); encoder, quantizer and decoder stay as the first stage left them. z_tgt is the target
scan's latent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .config import SpadeConfig, pair_weight_matrix
from .data import crop_offsets, sample_pairs, step_generator
from .discriminators import LatentDiscriminator, RealFake
from .distributed import DistContext
from .first_stage import FirstStage
from .losses import class_cross_entropy
from .stage import Stage, quantized


class _Translate(nn.Module):
    """MS-SPADE forward (and, for the cycle term, the way back) in one call for DDP."""

    def __init__(self, spade: nn.Module):
        super().__init__()
        self.spade = spade

    def forward(
        self, z_src: torch.Tensor, source: torch.Tensor, target: torch.Tensor, cycle: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fake = self.spade(z_src, target, source)
        return fake, (self.spade(fake, source, target) if cycle else None)


def trainable_spade(spade: nn.Module, gate_only: bool = False) -> list[nn.Parameter]:
    """Set ``requires_grad`` on what trains, and return it: all of MS-SPADE, or (``gate_only``) only the
    source gate."""
    if gate_only:
        spade.requires_grad_(False)
        spade.source_gate.requires_grad_(True)
        return [spade.source_gate]
    spade.requires_grad_(True)
    return list(spade.parameters())


# The image-space term's brain: voxels whose decoded target is above this level. Model space puts the
# background at -1 and each scan's 99.5th percentile at +1, so -0.9 is 5 % of that range above the background.
IMAGE_BRAIN_LEVEL = -0.9


class SpadeStage(Stage):
    name = "spade"
    metric_names = ["loss", "l1", "g_adv", "cycle", "d_loss"]

    def __init__(
        self, cfg: SpadeConfig, ctx: DistContext, first: FirstStage, codes: torch.Tensor, available: torch.Tensor,
    ):
        super().__init__(cfg, ctx)
        self.cfg: SpadeConfig = cfg
        self.first = first
        self.codes = codes
        self.available = available
        self.pair_weights = pair_weight_matrix(cfg.pair_weights)
        vqgan = first.vqgan.requires_grad_(False)
        if cfg.source_gate:
            vqgan.add_source_gate()
        elif cfg.gate_only and vqgan.spade.source_gate is None:
            raise UsageError(f"gate_only: the first stage {cfg.first_stage} has no source gate to train; set source_gate")
        trained = trainable_spade(vqgan.spade, cfg.gate_only)
        self.vqgan = self.place(vqgan)
        self.nets["vqgan"] = self.vqgan
        # a class absent from a batch leaves its SPADE layers unused: DDP must be told
        self.net = ctx.wrap(_Translate(self.vqgan.spade), find_unused_parameters=True)
        self.optimizers["spade"] = self.adam(trained)
        self.disc: LatentDiscriminator | None = None
        if cfg.adv_weight > 0:
            vq = vqgan.config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                disc = LatentDiscriminator(vq.embed_dim, cfg.disc_channels, vq.num_classes)
            self.disc = self.place(disc)
            self.nets["discriminator"] = self.disc
            self.disc_pair = ctx.wrap(RealFake(self.disc))
            self.optimizers["discriminator"] = self.adam(list(self.disc.parameters()))
        if cfg.image_l1_weight > 0:
            self.metric_names = [*self.metric_names, "image_l1"]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.cfg.seed, step, self.ctx.rank)
        subjects, src, tgt = sample_pairs(self.available, self.cfg.batch_size, g, self.pair_weights)
        return {"src_codes": self.codes[subjects, src], "tgt_codes": self.codes[subjects, tgt], "src": src, "tgt": tgt}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.vqgan.eval()
        self.vqgan.spade.train()
        z_src = self.tensor(quantized(self.vqgan, batch["src_codes"].to(self.device)))
        z_tgt = self.tensor(quantized(self.vqgan, batch["tgt_codes"].to(self.device)))
        src = batch["src"].to(self.device)
        tgt = batch["tgt"].to(self.device)
        with self.autocast():
            fake, back = self.net(z_src, src, tgt, cfg.cycle_weight > 0)
        l1 = (fake.float() - z_tgt).abs().mean()
        loss = cfg.l1_weight * l1
        zero = torch.zeros((), device=self.device)
        cycle, g_adv, d_loss = zero, zero, zero
        if back is not None:
            cycle = (back.float() - z_src).abs().mean()
            loss = loss + cfg.cycle_weight * cycle
        image_l1 = zero
        if cfg.image_l1_weight > 0:
            image_l1 = self.image_l1(fake, z_tgt, step)
            loss = loss + cfg.image_l1_weight * image_l1
        disc = self.disc
        if disc is not None:
            disc.requires_grad_(False)  # the generator's loss must not train the discriminator
            with self.autocast():
                g_adv = class_cross_entropy(disc(fake), tgt)
            loss = loss + cfg.adv_weight * g_adv
        self.optimize(loss, self.optimizers["spade"])
        if disc is not None:
            disc.requires_grad_(True)
            with self.autocast():
                real_logits, fake_logits = self.disc_pair(z_tgt, fake.detach())
            fake_class = torch.full_like(tgt, disc.fake_class)
            d_loss = 0.5 * (class_cross_entropy(real_logits, tgt) + class_cross_entropy(fake_logits, fake_class))
            self.optimize(d_loss, self.optimizers["discriminator"])
        self.finish_step()
        out = {"loss": loss, "l1": l1, "g_adv": g_adv, "cycle": cycle, "d_loss": d_loss}
        if cfg.image_l1_weight > 0:
            out["image_l1"] = image_l1
        return {k: v.detach().float() for k, v in out.items()}

    def image_l1(self, fake: torch.Tensor, z_tgt: torch.Tensor, step: int) -> torch.Tensor:
        """Mean |decode(fake) - decode(z_tgt)| over the voxels where the decoded target is brain, on the step's
        random crop of ``image_crop`` latent voxels (the same crop for the whole batch)."""
        if self.cfg.image_crop is not None:
            sides = fake.shape[2:]
            size = [min(side, want) for side, want in zip(sides, self.cfg.image_crop, strict=True)]
            start = crop_offsets(sides, size, step_generator(self.cfg.seed, step, self.ctx.rank, stream=1))
            window = tuple(slice(a, a + c) for a, c in zip(start, size, strict=True))
            fake, z_tgt = fake[(..., *window)], z_tgt[(..., *window)]
        with torch.no_grad():
            target = self.vqgan.decode(z_tgt).float()
        brain = (target > IMAGE_BRAIN_LEVEL).float()
        with self.autocast():
            image = self.vqgan.decode(fake)
        return ((image.float() - target).abs() * brain).sum() / brain.sum().clamp_min(1.0)

    def metadata(self) -> dict[str, Any]:
        return {"vqgan_config": self.vqgan.config.to_dict(), "preprocessing": dict(self.first.preprocessing)}
