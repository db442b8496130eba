"""Stage 3: the latent diffusion UNet, first stage (VQ-GAN with trained MS-SPADE) frozen.

For a pair (source, target) of one subject: z_src, z_tgt = quantized latents; t ~ U{0..T-1} (or the config's
``timestep_range``); noise ~ N(0, I);
x_t = sqrt(acp_t) z_tgt + sqrt(1 - acp_t) noise; loss = MSE(UNet(cat[x_t, z_src, spade(z_src, target)], t, target),
noise) as published, or MSE to z_tgt / to v / to z_tgt - spade(z_src, target) with the scheduler's
``prediction_type`` "sample" / "v_prediction" / "residual" (a correction to MS-SPADE's latent; the UNet's
zero-initialised output layers make a new residual UNet sample MS-SPADE's latent exactly). ``cond_noise``
perturbs the cached MS-SPADE output with Gaussian noise, in the conditioning and the residual's offset alike. With the config's ``crop``, every sample of a batch is one random box of the latent grid, the
same in z_src, z_tgt and the cached MS-SPADE output (computed on the whole latent, so no crop border reaches it). AdamW; an EMA of the UNet weights (LitEma's warm-up) is what export writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..models import UNet, UNetConfig
from ..schedulers import DDIMScheduler
from .config import DiffusionConfig, config_differences
from .data import crop_offsets, sample_pairs, step_generator
from .distributed import DistContext
from .first_stage import FirstStage, check_latent_grid
from .stage import Stage, frozen, quantized

logger = logging.getLogger(__name__)


def initial_unet(folder: str, config: UNetConfig, prediction_type: str | None = None) -> UNet:
    """The UNet of the model folder ``folder`` (config ``init``), which must have the architecture ``config`` and,
    when given, predict ``prediction_type``: a UNet trained for another target is a wrong start, not a head start."""
    from ..pipeline import ALDMPipeline
    from .first_stage import model_path

    folder = str(model_path(folder))
    if not (Path(folder) / "model_index.json").is_file():
        raise UsageError(f"--init (config init): {folder} is not a model folder (no model_index.json): export the run first")
    pipe = ALDMPipeline.from_pretrained(folder)
    if pipe.unet is None:
        raise UsageError(f"--init (config init): {folder} has no diffusion UNet (a first-stage-only model folder)")
    theirs = pipe.scheduler.config.prediction_type if pipe.scheduler is not None else None
    if prediction_type is not None and theirs != prediction_type:
        raise UsageError(
            f"--init (config init): the UNet of {folder} predicts {theirs!r}, this run trains one that predicts "
            f"{prediction_type!r}: start from a model of the same prediction_type, or from scratch (no init)"
        )
    if pipe.unet.config != config:
        diff = config_differences(config.to_dict(), pipe.unet.config.to_dict())
        raise UsageError(f"--init (config init): the UNet of {folder} differs from config model ({diff}): make them equal")
    return pipe.unet


#: A pair's cached MS-SPADE output has diverged when its largest value is this many times the median pair's.
DIVERGED = 20.0


def diverged_pairs_excluded(translated: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """``[subjects, source, target]``: the pairs whose cached MS-SPADE output did not diverge.

    MS-SPADE can diverge on a scan unlike those it was trained on (values of 1e4 and more where the other
    pairs stay within a few units); a UNet trained on such a pair takes steps of that size. A pair whose
    largest value exceeds ``DIVERGED`` times the median pair's is left out of training, with a warning.
    """
    peak = translated.abs().flatten(3).amax(-1)
    has = available[:, :, None] & available[:, None, :] & ~torch.eye(available.shape[1], dtype=torch.bool)
    if not bool(has.any()):
        return torch.ones_like(has)
    limit = DIVERGED * float(peak[has].median())
    allowed = ~(has & (peak > limit))
    bad = (~allowed).nonzero().tolist()
    if bad:
        from ..modalities import MODALITIES

        pairs = ", ".join(f"subject {n} {MODALITIES[s]}->{MODALITIES[t]} ({float(peak[n, s, t]):.3g})" for n, s, t in bad)
        logger.warning("MS-SPADE's output diverges (above %.3g) on %d pair(s), left out of training: %s",
                       limit, len(bad), pairs)
    return allowed


class DiffusionStage(Stage):
    name = "diffusion"
    metric_names = ["loss"]

    def __init__(
        self,
        cfg: DiffusionConfig,
        ctx: DistContext,
        first: FirstStage,
        codes: torch.Tensor,
        available: torch.Tensor,
        translated: torch.Tensor | None = None,
        init_unet: UNet | None = None,
    ):
        super().__init__(cfg, ctx)
        self.cfg: DiffusionConfig = cfg
        self.first = first
        self.codes = codes
        self.available = available
        self.translated = translated
        vq = first.vqgan.config
        unet_cfg = cfg.unet_config()
        if unet_cfg.in_channels != 3 * vq.embed_dim or unet_cfg.out_channels != vq.embed_dim:
            raise UsageError(
                f"config model: in_channels {unet_cfg.in_channels} / out_channels {unet_cfg.out_channels} must be "
                f"{3 * vq.embed_dim} / {vq.embed_dim} for the first stage's embed_dim {vq.embed_dim}"
            )
        if unet_cfg.num_classes != vq.num_classes:
            raise UsageError(f"config model: num_classes must be {vq.num_classes}, as the first stage's")
        check_latent_grid(first.preprocessing, vq, unet_cfg.downsampling_factor, "first stage")
        self.vqgan = self.place(frozen(first.vqgan))
        self.nets["vqgan"] = self.vqgan
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            unet = UNet(unet_cfg)
        if init_unet is not None:  # fine-tuning (config init): start from these weights
            unet.load_state_dict(init_unet.state_dict())
        self.unet = self.place(unet)
        self.nets["unet"] = self.unet
        self.net = ctx.wrap(self.unet)
        self.optimizers["unet"] = self.adam(list(self.unet.parameters()), decoupled=True)
        self.init_ema("unet", self.unet)
        self.scheduler = DDIMScheduler(cfg.scheduler_config())
        # [low, high) of the training timesteps (randint(0, T) draws exactly what the published randint(T) does)
        self.timesteps = tuple(cfg.timestep_range or (0, self.scheduler.config.num_train_timesteps))
        self.crop = self._latent_crop(cfg.crop, vq.downsampling_factor, unet_cfg.downsampling_factor, codes.shape[2:])
        self.latent_shape = (vq.embed_dim, *(self.crop or codes.shape[2:]))
        self.allowed = None if translated is None else diverged_pairs_excluded(translated, available)

    @staticmethod
    def _latent_crop(crop: list[int] | None, vq_factor: int, unet_factor: int, latent: torch.Size) -> list[int] | None:
        """The config's ``crop`` (model-space voxels) in latent voxels, checked against both networks and the grid."""
        if crop is None:
            return None
        step = vq_factor * unet_factor
        if any(c % step for c in crop):
            raise UsageError(f"config crop {crop}: sides must be multiples of {step} (VQ-GAN factor {vq_factor} "
                             f"x UNet downsampling {unet_factor})")
        grid = [s * vq_factor for s in latent]
        if any(c > g for c, g in zip(crop, grid, strict=True)):
            raise UsageError(f"config crop {crop} is larger than the model grid {grid}: make it smaller or null")
        return [c // vq_factor for c in crop]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.cfg.seed, step, self.ctx.rank)
        n = self.cfg.batch_size
        subjects, src, tgt = sample_pairs(self.available, n, g, allowed=self.allowed)
        t = torch.randint(*self.timesteps, (n,), generator=g)
        noise = torch.randn((n, *self.latent_shape), generator=g)
        out = {"src_codes": self.codes[subjects, src], "tgt_codes": self.codes[subjects, tgt], "tgt": tgt,
               "src": src}
        out.update({"t": t, "noise": noise})
        if self.translated is not None:
            out["cond"] = self.translated[subjects, src, tgt]
            if self.cfg.cond_noise > 0:
                out["cond"] = out["cond"] + self.cfg.cond_noise * torch.randn(out["cond"].shape, generator=g)
        if self.crop is not None:
            c = self.crop
            boxes = []
            for _ in range(n):
                o = crop_offsets(self.codes.shape[2:], c, g)
                boxes.append((slice(o[0], o[0] + c[0]), slice(o[1], o[1] + c[1]), slice(o[2], o[2] + c[2])))
            for key in ("src_codes", "tgt_codes", "cond"):
                if key in out:
                    out[key] = torch.stack([v[(..., *box)] for v, box in zip(out[key], boxes, strict=True)])
        return out

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        self.unet.train()
        z_src = self.tensor(quantized(self.vqgan, batch["src_codes"].to(self.device)))
        z_tgt = self.tensor(quantized(self.vqgan, batch["tgt_codes"].to(self.device)))
        tgt = batch["tgt"].to(self.device)
        t = batch["t"].to(self.device)
        noise = self.tensor(batch["noise"])
        if "cond" in batch:
            cond = self.tensor(batch["cond"])
        else:
            with torch.no_grad(), self.autocast():
                cond = self.vqgan.spade(z_src, tgt, batch["src"].to(self.device)).float()
        x_t = self.scheduler.add_noise(z_tgt, noise, t)
        with self.autocast():
            eps = self.net(torch.cat([x_t, z_src, cond], dim=1), t, tgt)
        if self.scheduler.config.prediction_type == "residual":
            target = self.scheduler.residual_target(z_tgt, cond)
        else:
            target = self.scheduler.training_target(z_tgt, noise, t).float()
        loss = F.mse_loss(eps.float(), target)
        self.optimize(loss, self.optimizers["unet"])
        self.update_ema("unet", self.unet, self.cfg.ema_decay, self.cfg.ema_warmup)
        self.finish_step()
        return {"loss": loss.detach().float()}

    def metadata(self) -> dict[str, Any]:
        return {"vqgan_config": self.vqgan.config.to_dict(), "preprocessing": dict(self.first.preprocessing)}
