"""Training configurations: one dataclass per stage, defaults = the published ALDM values (the authors' code).

The defaults are what the authors' yaml configs and Lightning modules train with (``recipes/aldm-published``
holds them as files, and ``tests/test_training_fidelity.py`` checks one optimiser step of each stage against
the authors' modules), except the few listed in docs/training.md (e.g. the autoencoder's 96^3 crops).

A JSON file passed with ``--config`` overrides defaults key by key; unknown keys and wrong types are
errors (a typo must not silently train with a default). The resolved config is saved to ``RUN/config.json``.

Values the published code leaves open are marked "not published" with the choice made here. The three
stages' configs share their loading, coercion and checks, hence one module of about 400 lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import MRTranslateError, UsageError
from ..modalities import MODALITIES, pair_indices
from ..models import UNetConfig, VQGANConfig
from ..models.refiner import RefinerConfig
from ..pipeline.config import PUBLISHED_PREPROCESSING
from ..schedulers import SchedulerConfig

STAGES = ("autoencoder", "spade", "diffusion", "refiner")


LR_SCHEDULES = ("constant", "cosine")
#: Settings added after runs were first saved, with the value that reproduces a run saved before them: a run's
#: config.json without one of these resumes with this value (a new config takes the default).
ADDED: dict[str, Any] = {"scale_lr": False, "flip_prob": 0.0, "codebook_init": "normal"}
CODEBOOK_INITS = ("uniform", "normal")
#: Settings of earlier versions that no released model used, with the value that left them off: a run's
#: config.json that holds them at that value still loads (and resumes); any other value is an unknown setting.
REMOVED: dict[str, dict[str, Any]] = {
    "autoencoder": {"translated_fraction": 0.0},
    "spade": {"anchor_targets": [], "train_targets": None},
    "diffusion": {"anchor_targets": [], "pair_weights": None},
}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based) under ``cfg``'s schedule (per sample: a stage multiplies it by
    batch size and processes when ``cfg.scale_lr``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by the three stages. ``batch_size`` is per process (per GPU under torchrun)."""

    stage: ClassVar[str] = ""

    seed: int = 0
    steps: int = 100_000
    batch_size: int = 4
    lr: float = 1e-5
    # As published (the authors' main.py, base_learning_rate): with scale_lr, lr (and lr_min) are rates per
    # sample, and the optimiser runs at lr x batch_size x processes (e.g. 1e-5 x 4 x 1 GPU = 4e-5); false: the
    # optimiser runs at lr itself, whatever the batch.
    scale_lr: bool = True
    # the learning rate over the run: "constant" (as published) or "cosine" (from lr down to lr_min at the last
    # step), either after a linear warm-up of warmup_steps; a function of the step alone, so resume is exact
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_min: float = 0.0
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    device: str = "auto"
    amp: bool = True  # automatic mixed precision, CUDA only (bfloat16 where supported, else float16 + scaler)
    channels_last: bool = True  # channels_last_3d memory format for the convolutions on CPU

    def to_dict(self) -> dict[str, Any]:
        d = {"stage": self.stage}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> TrainConfig:
        """Defaults overridden by ``data``; unknown keys or wrong types raise UsageError."""
        if not isinstance(data, dict):
            raise UsageError(f"{origin}: expected a JSON object of settings, got {type(data).__name__}")
        data = dict(data)
        stage = data.pop("stage", cls.stage)
        if stage != cls.stage:
            raise UsageError(f"{origin}: is a config of the {stage!r} stage, not of {cls.stage!r}")
        for key, inert in REMOVED.get(cls.stage, {}).items():
            if key in data and data[key] == inert:  # saved by an older version (a resumed run): it did nothing
                del data[key]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UsageError(
                f"{origin}: unknown setting(s) {', '.join(unknown)} for the {cls.stage} stage; "
                f"known: {', '.join(sorted(fields))}"
            )
        defaults = cls()
        kwargs = {k: _coerce(origin, k, v, getattr(defaults, k)) for k, v in data.items()}
        cfg = cls(**kwargs)
        cfg.validate(origin)
        return cfg

    def validate(self, origin: str = "config") -> None:
        _positive_int(origin, "steps", self.steps, minimum=0)
        _positive_int(origin, "batch_size", self.batch_size)
        _positive_int(origin, "log_every", self.log_every)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"{origin}: lr = {self.lr} must be a positive number")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"{origin}: lr_schedule = {self.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        _positive_int(origin, "warmup_steps", self.warmup_steps, minimum=0)
        if not (0 <= self.lr_min <= self.lr):
            raise UsageError(f"{origin}: lr_min = {self.lr_min} must be between 0 and lr ({self.lr})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UsageError(f"{origin}: betas = {list(self.betas)} must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            raise UsageError(f"{origin}: weight_decay must be >= 0")
        if not self.checkpoint_minutes > 0:
            raise UsageError(f"{origin}: checkpoint_minutes must be > 0")


@dataclasses.dataclass
class AutoencoderConfig(TrainConfig):
    """Stage 1: the VQ-GAN. ``model`` is a VQGANConfig dict; ``crop`` random crops (None: whole volumes)."""

    stage: ClassVar[str] = "autoencoder"

    model: dict[str, Any] = dataclasses.field(default_factory=lambda: VQGANConfig().to_dict())
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PUBLISHED_PREPROCESSING))
    crop: list[int] | None = dataclasses.field(default_factory=lambda: [96, 96, 96])  # the authors' advice
    codebook_beta: float = 0.25
    # Published 0 (both yamls: codebook_weight 0): the codebook term is computed but weighs nothing, so the codebook
    # itself does not train; 1.0 is taming-transformers' usual weight.
    codebook_weight: float = 0.0
    # A new codebook's values: "uniform" in +-1/n_embed (the authors' VectorQuantizer2, as published) or "normal",
    # N(0, 1) (torch's embedding default). Unused when the VQ-GAN starts from ``init``.
    codebook_init: str = "uniform"
    # Not in the published code (0 = off): every N steps, codes no sample used since the last restart are
    # moved onto random encoder outputs of the current batch (dead-code restart against codebook collapse).
    codebook_restart_every: int = 0
    # PatchGAN hinge loss. Published weight 0 (off); start step and depth: taming-transformers' usual values.
    disc_weight: float = 0.0
    disc_start: int = 50_001
    disc_layers: int = 3
    disc_channels: int = 64
    # As published (MONAI RandFlipd in the authors' data module): each axis of a training sample is flipped with
    # this probability, independently per axis and sample.
    flip_prob: float = 0.1
    # Perceptual loss on the VQ-GAN encoder features of a user-supplied model folder (off as published).
    perceptual_weight: float = 0.0
    perceptual_model: str | None = None
    # Fine-tuning (not published): a model folder, or an autoencoder/spade run, whose VQ-GAN (the same ``model``)
    # starts training instead of random weights. None: from scratch, as published.
    init: str | None = None
    # With ``init``: train the decoder side only (post_quant_conv, decoder), the encoder and codebook kept as they
    # are. The codes, and so a model's MS-SPADE and UNet, stay valid: a drop-in sharper decoder.
    freeze_encoder: bool = False
    # Not published (1.0: the plain mean over every voxel, as published): the weight of background voxels (model
    # value -1, the raw scan's 0) in the L1 reconstruction loss, brain voxels weighing 1. Outputs are 0 outside
    # the source's foreground anyway, so below 1 the decoder spends less on the step at the brain's edge, which
    # otherwise darkens the brain's outermost voxels.
    background_weight: float = 1.0

    def validate(self, origin: str = "config") -> None:
        super().validate(origin)
        vq = self.vqgan_config(origin)
        if not 0.0 <= self.background_weight <= 1.0:
            raise UsageError(f"{origin}: background_weight = {self.background_weight} must be in [0, 1]")
        if self.freeze_encoder and not self.init:
            raise UsageError(f"{origin}: freeze_encoder needs init, the model folder or run whose encoder is kept")
        if self.freeze_encoder and self.codebook_restart_every:
            raise UsageError(f"{origin}: freeze_encoder keeps the codebook: set codebook_restart_every to 0")
        _check_preprocessing(origin, self.preprocessing)
        if self.crop is not None:
            if len(self.crop) != 3 or any(not isinstance(c, int) or c <= 0 for c in self.crop):
                raise UsageError(f"{origin}: crop = {self.crop} must be three positive integers or null")
            f = vq.downsampling_factor
            if any(c % f for c in self.crop):
                raise UsageError(f"{origin}: crop {self.crop} sides must be multiples of the VQ-GAN factor {f}")
            if any(c > g for c, g in zip(self.crop, self.preprocessing["grid"], strict=True)):
                raise UsageError(f"{origin}: crop {self.crop} is larger than the grid {self.preprocessing['grid']}")
        for name in ("codebook_beta", "codebook_weight", "disc_weight", "perceptual_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"{origin}: {name} must be >= 0")
        if self.codebook_init not in CODEBOOK_INITS:
            choices = ", ".join(CODEBOOK_INITS)
            raise UsageError(f"{origin}: codebook_init = {self.codebook_init!r}: use one of {choices}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise UsageError(f"{origin}: flip_prob = {self.flip_prob} must be in [0, 1]")
        _positive_int(origin, "disc_start", self.disc_start, minimum=0)
        _positive_int(origin, "codebook_restart_every", self.codebook_restart_every, minimum=0)
        _positive_int(origin, "disc_layers", self.disc_layers)
        _positive_int(origin, "disc_channels", self.disc_channels)
        side = min(self.crop or self.preprocessing["grid"])
        need = 3 * 2**self.disc_layers  # PatchGAN3D.min_side
        if self.disc_weight > 0 and side < need:
            raise UsageError(
                f"{origin}: a {self.disc_layers}-layer PatchGAN needs crops of at least {need} voxels a side, "
                f"got {side}: enlarge crop or lower disc_layers"
            )
        if self.perceptual_weight > 0 and not self.perceptual_model:
            raise UsageError(
                f"{origin}: perceptual_weight > 0 needs perceptual_model, the path of an mrtranslate model folder "
                "whose VQ-GAN encoder features serve as the perceptual network"
            )

    def vqgan_config(self, origin: str = "config") -> VQGANConfig:
        return _model_config(VQGANConfig, self.model, f"{origin}: model")


@dataclasses.dataclass
class SpadeConfig(TrainConfig):
    """Stage 2: MS-SPADE on frozen first-stage latents. ``first_stage``: autoencoder run or model folder."""

    stage: ClassVar[str] = "spade"

    steps: int = 50_000  # not published
    lr: float = 2e-5
    first_stage: str | None = None
    l1_weight: float = 1.0
    # The latent discriminator's cross-entropy term. Published 0: the authors' stage-2 yaml sets disc_factor 0,
    # which turns both discriminator terms off, so the published stage 2 is plain latent L1.
    adv_weight: float = 0.0
    cycle_weight: float = 0.0  # the paper's cycle-consistency term; absent from the published code
    disc_channels: int = 64
    # How often each (source, target) pair is drawn, relative: {"t1->t1ce": 4} draws T1 -> T1ce four times as
    # often as each unnamed pair (weight 1; 0 never draws it). None (as published): all pairs alike.
    pair_weights: dict[str, float] | None = None
    # Not published: give MS-SPADE its per-(source, target) gate towards the source latent (models/spade.py),
    # starting at 0, unless the first stage has one already; with gate_only, only that gate trains (the blocks
    # frozen: every pair's output moves only along source latent minus blocks' output).
    source_gate: bool = False
    gate_only: bool = False
    # Not published (0: latent L1 only, as published): an image-space term, the L1 between the decoded
    # translation and the decoded target latent through the frozen decoder, averaged over the voxels where the
    # decoded target is brain; on one random crop of ``image_crop`` latent voxels per axis per step (None: the
    # whole latents), which bounds the decoder's memory.
    image_l1_weight: float = 0.0
    image_crop: list[int] | None = None

    def validate(self, origin: str = "config") -> None:
        super().validate(origin)
        if self.image_crop is not None and (
            len(self.image_crop) != 3 or any(not isinstance(c, int) or c <= 0 for c in self.image_crop)
        ):
            raise UsageError(f"{origin}: image_crop = {self.image_crop} must be three positive integers or null")
        if self.gate_only and (self.adv_weight > 0 or self.cycle_weight > 0):
            raise UsageError(f"{origin}: gate_only trains the source gate alone: set adv_weight and cycle_weight to 0")
        for name in ("l1_weight", "adv_weight", "cycle_weight", "image_l1_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"{origin}: {name} must be >= 0")
        _positive_int(origin, "disc_channels", self.disc_channels)
        pair_weight_matrix(self.pair_weights, origin)


@dataclasses.dataclass
class DiffusionConfig(TrainConfig):
    """Stage 3: the latent diffusion UNet. ``first_stage``: a spade run (or a model folder)."""

    stage: ClassVar[str] = "diffusion"

    steps: int = 62_600  # 200 epochs of the 1251 BraTS 2021 subjects at batch 4
    betas: tuple[float, float] = (0.9, 0.999)  # torch AdamW defaults, as the LDM code
    weight_decay: float = 0.01
    first_stage: str | None = None
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: UNetConfig().to_dict())
    scheduler: dict[str, Any] = dataclasses.field(default_factory=lambda: SchedulerConfig().to_dict())
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # LitEma: decay = min(ema_decay, (1 + n) / (10 + n)) after n updates
    # Compute MS-SPADE(source -> target) of every pair once and keep it (memory: 12 latents per subject)
    # instead of running the frozen MS-SPADE in every step.
    cache_spade: bool = True
    # Fine-tuning: a model folder whose UNet (the same architecture as ``model``) starts the UNet and its EMA,
    # instead of random weights. None (as published): train from scratch.
    init: str | None = None
    # Not in the published code (None = all T timesteps, as published): [low, high), the training timesteps
    # t ~ U{low..high-1}. A UNet that only ever samples at strength s (timesteps <= s * T, see
    # DDIMScheduler.steps) can spend all its steps there, as SDXL's refiner does with the 200 lowest.
    timestep_range: list[int] | None = None
    # Not in the published code (None = whole latents, as published): train on random crops of this many
    # model-space voxels a side (multiples of the VQ-GAN factor times the UNet's downsampling factor), the
    # same box in the source latent, the target latent and MS-SPADE's output. The UNet is convolutional and
    # samples whole volumes; crops make a step several times cheaper, which is what a CPU needs.
    crop: list[int] | None = None
    # Not in the published code (0 = as published): the standard deviation of Gaussian noise added to MS-SPADE's
    # cached output in training (the UNet's conditioning and, for a "residual" UNet, the latent it corrects).
    # MS-SPADE fits its own training subjects better than new ones; a perturbed conditioning shows the UNet
    # errors like those it meets at inference, so that it learns to correct them rather than to copy.
    cond_noise: float = 0.0

    def validate(self, origin: str = "config") -> None:
        super().validate(origin)
        self.unet_config(origin)
        if not (isinstance(self.cond_noise, (int, float)) and 0 <= self.cond_noise <= 10):
            raise UsageError(f"{origin}: cond_noise = {self.cond_noise!r} must be a number in [0, 10]")
        if self.crop is not None and (len(self.crop) != 3 or any(c <= 0 for c in self.crop)):
            raise UsageError(f"{origin}: crop = {self.crop} must be three positive integers or null")
        if self.crop is not None and not self.cache_spade:
            raise UsageError(f"{origin}: crop needs cache_spade (MS-SPADE's output of the whole latent, then cropped)")
        sched = self.scheduler_config(origin)
        if self.cond_noise > 0 and not self.cache_spade:
            raise UsageError(f"{origin}: cond_noise perturbs the cached MS-SPADE output: set cache_spade to true")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"{origin}: ema_decay must be in [0, 1)")
        if self.timestep_range is not None:
            r = self.timestep_range
            T = sched.num_train_timesteps
            if len(r) != 2 or any(type(v) is not int for v in r) or not 0 <= r[0] < r[1] <= T:
                raise UsageError(
                    f"{origin}: timestep_range = {r} must be [low, high] (t drawn from low..high-1) with "
                    f"0 <= low < high <= {T} (num_train_timesteps), or null for all"
                )

    def unet_config(self, origin: str = "config") -> UNetConfig:
        return _model_config(UNetConfig, self.model, f"{origin}: model")

    def scheduler_config(self, origin: str = "config") -> SchedulerConfig:
        return _model_config(SchedulerConfig, self.scheduler, f"{origin}: scheduler")


def config_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """``key mine vs theirs, ...`` for each setting where two model configs differ ('' if none)."""
    keys = list(mine) + [k for k in theirs if k not in mine]
    return ", ".join(f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k))


def pair_weight_matrix(
    weights: dict[str, float] | None, origin: str = "config", modalities: Sequence[str] = MODALITIES
) -> torch.Tensor | None:
    """``pair_weights`` as a (source, target) matrix over ``modalities`` (1 where unnamed, 0 on the diagonal);
    None stays None (every pair alike, the published sampling)."""
    if weights is None:
        return None
    n = len(modalities)
    matrix = torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)
    for key, w in weights.items():
        pair = pair_indices(key, modalities)
        if pair is None:
            raise UsageError(
                f"{origin}: pair_weights key {key!r} must be 'source->target' with two different modalities "
                f"of {', '.join(modalities)}"
            )
        if not (math.isfinite(w) and w >= 0):
            raise UsageError(f"{origin}: pair_weights[{key!r}] = {w} must be a number >= 0")
        matrix[pair] = w
    if not matrix.sum() > 0:
        raise UsageError(f"{origin}: pair_weights gives every pair weight 0: at least one must be drawn")
    return matrix


@dataclasses.dataclass
class RefinerTrainConfig(TrainConfig):
    """The detail refiner (not published; :mod:`mrtranslate.models.refiner`), trained on an exported model's own
    outputs: ``model_folder``'s predictions on the training subjects, from ``report`` (the --out folder of
    ``mrtranslate evaluate --model MODEL_FOLDER --source all`` at the model's default sampling), against the real
    targets, on random boxes of ``crop`` voxels of the inputs' own grid. Loss: the L1 in the brain plus ``ssim_weight``
    times (1 - SSIM), each image scaled as the metrics scale it."""

    stage: ClassVar[str] = "refiner"

    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-3
    scale_lr: bool = False
    lr_schedule: str = "cosine"
    lr_min: float = 1e-5
    warmup_steps: int = 10
    betas: tuple[float, float] = (0.9, 0.999)
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: RefinerConfig().to_dict())
    model_folder: str | None = None
    report: str | None = None
    crop: list[int] = dataclasses.field(default_factory=lambda: [48, 48, 48])
    ssim_weight: float = 1.0

    def validate(self, origin: str = "config") -> None:
        super().validate(origin)
        self.refiner_config(origin)
        if len(self.crop) != 3 or any(not isinstance(c, int) or c < 16 for c in self.crop):
            raise UsageError(f"{origin}: crop = {self.crop} must be three integers of at least 16 (the SSIM window "
                             "needs 11 voxels)")
        if not (isinstance(self.ssim_weight, (int, float)) and 0 <= self.ssim_weight <= 100):
            raise UsageError(f"{origin}: ssim_weight = {self.ssim_weight!r} must be a number in [0, 100]")

    def refiner_config(self, origin: str = "config") -> RefinerConfig:
        return _model_config(RefinerConfig, self.model, f"{origin}: model")


CONFIGS: dict[str, type[TrainConfig]] = {
    c.stage: c for c in (AutoencoderConfig, SpadeConfig, DiffusionConfig, RefinerTrainConfig)
}


def config_class(stage: str) -> type[TrainConfig]:
    if stage not in CONFIGS:
        raise UsageError(f"unknown training stage {stage!r}: use one of {', '.join(STAGES)}")
    return CONFIGS[stage]


def load_config(stage: str, path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The stage's defaults, overridden by the JSON file at ``path`` and then by ``overrides``."""
    data: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist: pass a JSON file of settings")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"config file {path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"config file {path}: expected a JSON object of settings")
    data = {**data, **(overrides or {})}
    return config_class(stage).from_dict(data, origin)


def _coerce(origin: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the default (ints accepted for floats, lists for tuples)."""
    def bad(kind: str) -> UsageError:
        return UsageError(f"{origin}: {key} = {value!r} must be {kind}")

    if key in ("model", "scheduler", "preprocessing"):
        if not isinstance(value, dict):
            raise bad("a JSON object")
        merged = dict(default)
        merged.update(value)
        return merged
    if key in ("crop", "timestep_range"):
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad(f"a list of {'three' if key == 'crop' else 'two'} integers or null")
        return list(value)
    if key == "pair_weights":
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in value.values()
        ):
            raise bad('a JSON object of "source->target": weight, or null')
        return {str(k): float(w) for k, w in value.items()}
    if key in ("perceptual_model", "first_stage", "init"):
        if value is not None and not isinstance(value, str):
            raise bad("a path string or null")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or len(value) != len(default):
            raise bad(f"a list of {len(default)} numbers")
        return tuple(_coerce(origin, key, v, d) for v, d in zip(value, default, strict=True))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def _positive_int(origin: str, name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{origin}: {name} = {value!r} must be an integer >= {minimum}")


def _model_config(cls: type, data: dict[str, Any], origin: str) -> Any:
    from ..errors import ModelFormatError

    known = {f.name for f in dataclasses.fields(cls)} | {"_class_name", "_format_version"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{origin}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls.from_dict(data, origin=origin)
    except ModelFormatError as exc:
        raise UsageError(str(exc)) from None


def _check_preprocessing(origin: str, prep: dict[str, Any]) -> None:
    from ..imaging.model_space import Preprocessing

    unknown = sorted(set(prep) - set(PUBLISHED_PREPROCESSING))
    if unknown:
        raise UsageError(f"{origin}: preprocessing has unknown key(s) {', '.join(unknown)}")
    try:
        Preprocessing.from_dict(prep)
    except MRTranslateError as exc:
        raise UsageError(f"{origin}: preprocessing: {exc}") from None
