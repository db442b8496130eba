"""Stage 1: the VQ-GAN autoencoder (encoder, quantizer, quant convs, decoder; MS-SPADE untouched).

loss = L1(x, x_rec) [+ perceptual_weight * perceptual(x, x_rec)] + codebook_weight * codebook
       [+ adaptive weight * disc_weight * hinge generator loss, from step ``disc_start``]
The L1 weighs background voxels (model value -1) ``background_weight`` (1, published: a plain mean).
The 3D PatchGAN is trained with the hinge loss from ``disc_start`` on; with ``disc_weight`` 0 (published)
it is not built at all. Source and target of a sample are the same scan: a random modality of a random
subject, randomly cropped to ``crop`` and flipped along each axis with probability ``flip_prob``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import VQGAN
from ..imaging.model_space import Preprocessing
from .config import AutoencoderConfig
from .data import ImageSet, model_foreground, random_crops, random_flips, sample_scans, step_generator
from .discriminators import PatchGAN3D, RealFake
from .distributed import DistContext
from .losses import (
    EncoderFeatures,
    adaptive_gan_weight,
    codebook_loss,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_loss,
)
from .stage import FIRST_STAGE_ENCODER, Stage


class _Autoencode(nn.Module):
    """x -> (reconstruction, z_e, z_q): one forward call for DDP. The decoder sees z_e + sg[z_q - z_e]."""

    def __init__(self, vqgan: VQGAN):
        super().__init__()
        self.vqgan = vqgan

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_e = self.vqgan.encode_continuous(x)
        codes = self.vqgan.quantize.codes(z_e)
        z_q = self.vqgan.quantize.lookup(codes)  # float32, gradient to the codebook
        z_st = z_e + (z_q.to(z_e.dtype) - z_e).detach()
        return self.vqgan.decode(z_st), z_e, z_q, codes


def reconstruction_l1(x: torch.Tensor, rec: torch.Tensor, background_weight: float = 1.0) -> torch.Tensor:
    """Mean |x - rec|, background voxels (``x <= -1``) weighted ``background_weight`` and the brain 1.

    1.0 is the published plain mean. A crop without any brain voxel and weight 0 gives 0 (0 / tiny).
    """
    diff = (x - rec).abs()
    if background_weight == 1.0:
        return diff.mean()
    weight = torch.where(model_foreground(x), 1.0, background_weight).to(diff.dtype)
    return (diff * weight).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


class CodeUsage(nn.Module):
    """How often each code was chosen since the last restart (a buffer, so checkpoints keep it)."""

    def __init__(self, n_embed: int):
        super().__init__()
        self.register_buffer("counts", torch.zeros(n_embed))


class AutoencoderStage(Stage):
    name = "autoencoder"
    metric_names = ["loss", "rec", "codebook", "perceptual", "g_adv", "d_weight", "d_loss"]

    def __init__(self, cfg: AutoencoderConfig, ctx: DistContext, images: ImageSet | None,
                 init_vqgan: VQGAN | None = None, progress: bool = True):
        super().__init__(cfg, ctx)
        self.cfg: AutoencoderConfig = cfg
        self.images = images
        self.prep = Preprocessing.from_dict(cfg.preprocessing)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            vqgan = VQGAN(cfg.vqgan_config())
            if cfg.codebook_init == "uniform":
                n = vqgan.config.n_embed
                nn.init.uniform_(vqgan.quantize.embedding.weight, -1.0 / n, 1.0 / n)
            disc = PatchGAN3D(1, cfg.disc_channels, cfg.disc_layers) if cfg.disc_weight > 0 else None
        if init_vqgan is not None:  # fine-tuning; a resumed run's checkpoint replaces these weights
            vqgan.load_state_dict(init_vqgan.state_dict())
        vqgan.spade.requires_grad_(False)  # trained in stage 2
        if cfg.freeze_encoder:  # the codes stay those of the init model
            for name, param in vqgan.named_parameters():
                if name.startswith(FIRST_STAGE_ENCODER):
                    param.requires_grad_(False)
        self.vqgan = self.place(vqgan)
        self.nets["vqgan"] = self.vqgan
        self.net = ctx.wrap(_Autoencode(self.vqgan))
        trainable = [p for p in self.vqgan.parameters() if p.requires_grad]
        self.optimizers["vqgan"] = self.adam(trainable)
        self.disc: PatchGAN3D | None = None
        if disc is not None:
            if ctx.distributed and self.device.type == "cuda":
                disc = nn.SyncBatchNorm.convert_sync_batchnorm(disc)
            self.disc = self.place(disc)
            self.nets["discriminator"] = self.disc
            self.disc_pair = ctx.wrap(RealFake(self.disc))
            self.optimizers["discriminator"] = self.adam(list(self.disc.parameters()))
        self.usage: CodeUsage | None = None
        if cfg.codebook_restart_every > 0:
            self.usage = self.place(CodeUsage(self.vqgan.config.n_embed))
            self.nets["codebook_usage"] = self.usage
            self.metric_names = [*self.metric_names, "codes_restarted"]
        self.progress = progress
        self.features: EncoderFeatures | None = None
        if cfg.perceptual_weight > 0 and cfg.perceptual_model:
            from ..pipeline import ALDMPipeline

            pipe = ALDMPipeline.from_pretrained(cfg.perceptual_model)
            self.features = self.place(EncoderFeatures(pipe.vqgan.encoder))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        if self.images is None:
            raise RuntimeError("the autoencoder stage needs images")
        g = step_generator(self.cfg.seed, step, self.ctx.rank)
        subjects, mods = sample_scans(self.images.available, self.cfg.batch_size, g)
        x = random_crops(self.images.images[subjects, mods], self.cfg.crop, g)
        return {"x": random_flips(x, self.cfg.flip_prob, g)}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        x = self.tensor(batch["x"])
        self.vqgan.train()
        with self.autocast():
            rec, z_e, z_q, codes = self.net(x)
        rec_loss = reconstruction_l1(x.float(), rec.float(), cfg.background_weight)
        nll = rec_loss
        zero = torch.zeros((), device=self.device)
        p_loss = zero
        if self.features is not None:
            with self.autocast():
                p_loss = perceptual_loss(self.features, x, rec)
            nll = rec_loss + cfg.perceptual_weight * p_loss
        cb = codebook_loss(z_e, z_q, cfg.codebook_beta)
        loss = nll + cfg.codebook_weight * cb
        disc = self.disc if step >= cfg.disc_start else None
        g_adv, d_weight, d_loss = zero, zero, zero
        if disc is not None:
            disc.train().requires_grad_(False)  # the generator's loss must not train the discriminator
            with self.autocast():
                g_adv = hinge_g_loss(disc(rec))
            d_weight = self._gan_weight(nll, g_adv)
            loss = loss + d_weight * g_adv
        self.optimize(loss, self.optimizers["vqgan"])
        if disc is not None:
            disc.requires_grad_(True)
            with self.autocast():
                real, fake = self.disc_pair(x, rec.detach())
            d_loss = hinge_d_loss(real, fake)
            self.optimize(d_loss, self.optimizers["discriminator"])
        self.finish_step()
        out = {"loss": loss, "rec": rec_loss, "codebook": cb, "perceptual": p_loss, "g_adv": g_adv}
        out.update({"d_weight": d_weight, "d_loss": d_loss})
        if self.usage is not None:
            out["codes_restarted"] = self._restart_dead_codes(codes, z_e, step)
        return {k: v.detach().float() for k, v in out.items()}

    @torch.no_grad()
    def _restart_dead_codes(self, codes: torch.Tensor, z_e: torch.Tensor, step: int) -> torch.Tensor:
        """Count code usage; every ``codebook_restart_every`` steps move the unused codes onto random encoder
        outputs of this batch (averaged over processes, so every process gets the same codebook)."""
        usage = self.usage.counts
        usage += torch.bincount(codes.reshape(-1), minlength=usage.numel()).to(usage)
        if (step + 1) % self.cfg.codebook_restart_every:
            return torch.zeros((), device=self.device)
        dead = self.ctx.mean(usage) == 0
        n_dead = int(dead.sum())
        if n_dead:
            flat = z_e.detach().float().movedim(1, -1).reshape(-1, z_e.shape[1])
            g = step_generator(self.cfg.seed, step, 0, stream=1)  # the same draw on every process
            idx = torch.randint(0, flat.shape[0], (n_dead,), generator=g).to(flat.device)
            weight = self.vqgan.quantize.embedding.weight
            weight[dead] = self.ctx.mean(flat[idx]).to(weight.dtype)
            state = self.optimizers["vqgan"].state.get(weight, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
        usage.zero_()
        return torch.tensor(float(n_dead), device=self.device)

    def _gan_weight(self, nll: torch.Tensor, g_adv: torch.Tensor) -> torch.Tensor:
        last = self.vqgan.decoder.conv_out.weight
        g_rec = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_adv, last, retain_graph=True)[0]
        # under DDP: the gradients of the loss averaged over all processes, as one process would see them
        return adaptive_gan_weight(self.ctx.mean(g_rec), self.ctx.mean(g_gan), self.cfg.disc_weight)

    def metadata(self) -> dict[str, Any]:
        return {"vqgan_config": self.vqgan.config.to_dict(), "preprocessing": self.prep.to_dict()}
