"""Build a stage with its data: images for the autoencoder, cached first-stage latents for spade and diffusion."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError, UsageError, option
from ..models import VQGAN, VQGANConfig
from ..imaging.model_space import Preprocessing
from .autoencoder import AutoencoderStage
from .checkpoint import load_checkpoint, load_module
from .config import (
    AutoencoderConfig,
    DiffusionConfig,
    RefinerTrainConfig,
    SpadeConfig,
    TrainConfig,
    config_differences,
)
from .data import dataset_subjects, describe_dataset, load_images
from .diffusion import DiffusionStage, initial_unet
from .distributed import DistContext
from .memory import (
    autoencoder_memory,
    check_training_memory,
    diffusion_memory,
    image_bytes,
    latent_shape,
    spade_memory,
)
from .first_stage import (
    FirstStage,
    cached,
    encode_codes,
    load_first_stage,
    model_path,
    translate_codes,
)
from .packs import is_pack, read_pack
from .runs import RunFolder
from .spade import SpadeStage
from .stage import FIRST_STAGE_ENCODER, Stage, weights_hash

logger = logging.getLogger(__name__)


@dataclass
class Built:
    stage: Stage
    data_info: dict[str, Any] | None  # for run.json of a new run
    record: dict[str, Any] = field(default_factory=dict)  # more run.json entries of a new run


def _need_data(data: Path | str | None, stage: str) -> Path:
    if data is None:
        raise UsageError(f"the {stage} stage needs --data DIR, the dataset folder")
    return Path(data)


def build_stage(
    cfg: TrainConfig, ctx: DistContext, folder: RunFolder, data: Path | str | None,
    record: dict[str, Any] | None, progress: bool, max_memory: int | str | None = None,
) -> Built:
    """The stage object of ``cfg`` with its data; ``record`` is the run.json of a resumed run (None: new run).

    Before the data are loaded, the peak memory of a training step is estimated and the run is refused when
    it exceeds what the device has free (or ``max_memory``)."""
    if isinstance(cfg, AutoencoderConfig):
        root = _need_data(data, cfg.stage)
        subjects = dataset_subjects(root, 1)
        prep = Preprocessing.from_dict(cfg.preprocessing)
        _check_memory(cfg, ctx, max_memory, len(subjects), list(prep.grid), None)
        init, extras = None, {}
        if cfg.init is not None and record is None:  # read and checked before the images are loaded
            init = _initial_vqgan(cfg)
            extras["init"] = dict(init.source)
        images = load_images(subjects, prep, ctx.rank, ctx.world_size, progress)
        stage = AutoencoderStage(cfg, ctx, images, None if init is None else init.vqgan, progress)
        return Built(stage, describe_dataset(root, subjects), extras)
    if isinstance(cfg, RefinerTrainConfig):
        return _refiner_stage(cfg, ctx, data, record, progress)
    if not isinstance(cfg, (SpadeConfig, DiffusionConfig)):
        raise UsageError(f"unknown stage config {type(cfg).__name__}")

    if record is None:
        if not cfg.first_stage:
            raise UsageError(
                f"the {cfg.stage} stage needs {option('first_stage')}: an autoencoder/spade run or a model folder"
            )
        first = load_first_stage(cfg.first_stage)
        extras = {"first_stage": first.source, "provenance": first.provenance}
    else:
        first = _first_stage_of_run(folder, record)
        extras = {}
    if isinstance(cfg, DiffusionConfig) and first.source.get("stage") == "autoencoder":
        # an autoencoder run keeps the MS-SPADE it started with (a fine-tuned model's or spade run's is trained)
        if not (first.provenance and first.provenance[-1].get("init")):
            logger.warning("the first stage is an autoencoder run: its MS-SPADE is untrained; train a spade run first")
    data_info = None
    subjects = None
    pack = None
    if is_pack(data):  # latents encoded once (`mrtranslate train encode`), checked against this first stage
        pack = read_pack(data, first, ctx.rank, ctx.world_size)
        data_info = pack["info"]
    elif record is None:
        root = _need_data(data, cfg.stage)
        subjects = dataset_subjects(root, 2)
        data_info = describe_dataset(root, subjects)

    n_subjects = len(subjects) if subjects is not None else len(pack["cases"]) if pack is not None else 0
    _check_memory(cfg, ctx, max_memory, n_subjects,
                  list(first.preprocessing["grid"]), first.vqgan.config)
    init_unet = None
    if isinstance(cfg, DiffusionConfig) and cfg.init is not None and record is None:
        # read (and checked) before the data are encoded; a resumed run's checkpoint holds the UNet instead
        init_unet = initial_unet(cfg.init, cfg.unet_config(), cfg.scheduler_config().prediction_type)
        extras["init"] = {"path": str(model_path(cfg.init).resolve()), "kind": "model"}
    translate = isinstance(cfg, DiffusionConfig) and cfg.cache_spade
    prefixes = FIRST_STAGE_ENCODER + (("spade.",) if translate else ())
    prep = Preprocessing.from_dict(first.preprocessing)
    key = {
        "weights": weights_hash(first.vqgan, prefixes),
        "preprocessing": prep.to_dict(),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "spade": translate,
    }

    def compute() -> dict[str, torch.Tensor]:
        nonlocal subjects
        vqgan = first.vqgan.to(ctx.device)
        if pack is not None:
            out = {"codes": pack["codes"], "available": pack["available"]}
        else:
            if subjects is None:
                subjects = dataset_subjects(_need_data(data, cfg.stage), 2)
            images = load_images(subjects, prep, ctx.rank, ctx.world_size, progress)
            out = {"codes": encode_codes(vqgan, images, ctx.device, progress), "available": images.available}
            del images
        if translate:
            out["translated"] = translate_codes(vqgan, out["codes"], out["available"], ctx.device, progress)
        first.vqgan.to("cpu")
        return out

    folder.path.mkdir(parents=True, exist_ok=True)
    latents = cached(folder.latents_path(ctx.rank, ctx.world_size), key, compute)
    codes, available = latents["codes"], latents["available"].bool()
    if isinstance(cfg, SpadeConfig):
        stage: Stage = SpadeStage(cfg, ctx, first, codes, available)
    else:
        stage = DiffusionStage(cfg, ctx, first, codes, available, latents.get("translated"), init_unet)
    return Built(stage, data_info, extras)


def _refiner_stage(cfg: RefinerTrainConfig, ctx: DistContext, data: Path | str | None,
                   record: dict[str, Any] | None, progress: bool) -> Built:
    """The refiner stage on ``cfg.model_folder``'s predictions in ``cfg.report`` (:mod:`.refiner`). Its memory is
    that of the scans it keeps (float16, inside each subject's brain box) and of a few small crops: no estimate."""
    from ..pipeline.config import PipelineConfig
    from ..pipeline.folder import INDEX_NAME, read_model_json
    from .refiner import RefinerStage, load_refiner_data

    if not cfg.model_folder or not cfg.report:
        raise UsageError("the refiner stage needs --model (the exported model folder) and --report (its evaluate "
                         "report on the training subjects)")
    root = _need_data(data, cfg.stage)
    model = Path(cfg.model_folder)
    refiner_data = load_refiner_data(model, cfg.report, root, cfg.refiner_config(), progress)
    if record is not None and (record.get("data") or {}).get("model_sha256") != refiner_data.info["model_sha256"]:
        raise UsageError(f"{cfg.report} is no longer the report this run started on: start a new run")
    index = model / INDEX_NAME
    modalities = PipelineConfig.from_dict(read_model_json(index, str(index)), origin=str(index)).modalities
    stage = RefinerStage(cfg, ctx, refiner_data, modalities)
    return Built(stage, {"folder": str(root.resolve()), **refiner_data.info})


def _check_memory(cfg: TrainConfig, ctx: DistContext, max_memory: int | str | None, subjects: int,
                  grid: list[int], vq: VQGANConfig | None) -> None:
    """Refuse a step that will not fit (see :mod:`mrtranslate.training.memory`)."""
    half = ctx.device.type == "cuda" and cfg.amp
    share = -(-subjects // ctx.world_size)  # this process's subjects
    on_cpu = ctx.device.type == "cpu"
    if isinstance(cfg, AutoencoderConfig):
        crop = cfg.crop or grid
        disc = (cfg.disc_channels, cfg.disc_layers) if cfg.disc_weight > 0 else None
        data = image_bytes(share, grid) if on_cpu else 0
        estimate = autoencoder_memory(cfg.model, cfg.batch_size, crop, disc, half, data)
        lower = "batch_size or crop"
    else:
        assert vq is not None
        latent = latent_shape(grid, vq.downsampling_factor)
        # cached latents: the codes of every scan (int64), and MS-SPADE's translations of every pair
        data = share * 4 * 8 * int(torch.Size(latent).numel())
        if isinstance(cfg, DiffusionConfig):
            if cfg.cache_spade:
                data += share * 16 * vq.embed_dim * 4 * int(torch.Size(latent).numel())
            # the stage's own check of the crop (its one-line error) before any estimate
            unet_factor = cfg.unet_config().downsampling_factor
            crop = DiffusionStage._latent_crop(cfg.crop, vq.downsampling_factor, unet_factor, torch.Size(latent))
            estimate = diffusion_memory(cfg.model, vq.to_dict(), cfg.batch_size, crop or latent, half,
                                        data if on_cpu else 0)
            lower = "batch_size or crop"
        else:
            image = None
            if cfg.image_l1_weight > 0:
                image = tuple(min(s, c) for s, c in zip(latent, cfg.image_crop or latent, strict=True))
            estimate = spade_memory(vq.to_dict(), cfg.batch_size, latent, half, data if on_cpu else 0, image)
            lower = "batch_size or image_crop" if image is not None else "batch_size"
    logger.info("estimated peak memory of a %s step: %d bytes", cfg.stage, estimate.peak)
    check_training_memory(estimate, ctx.device, max_memory, cfg.stage, lower)


def _initial_vqgan(cfg: AutoencoderConfig) -> FirstStage:
    """The VQ-GAN that starts a fine-tuning autoencoder run: the same architecture as ``cfg.model``."""
    init = load_first_stage(cfg.init)
    diff = config_differences(cfg.vqgan_config().to_dict(), init.vqgan.config.to_dict())
    if diff:
        raise UsageError(f"--init (config init): the VQ-GAN of {cfg.init} differs from config model ({diff}): "
                         "make them equal")
    if init.preprocessing != dict(cfg.preprocessing):
        message = (f"init {cfg.init} was trained with preprocessing {init.preprocessing}, the config has "
                   f"{dict(cfg.preprocessing)}")
        if cfg.freeze_encoder:
            raise UsageError(message + ": freeze_encoder keeps its codes, so set the same preprocessing")
        logger.warning("%s; its latents will change", message)
    return init


def _first_stage_of_run(folder: RunFolder, record: dict[str, Any]) -> FirstStage:
    """The VQ-GAN a resumed spade/diffusion run holds in its own checkpoint."""
    tensors, scalars = load_checkpoint(folder.checkpoint_dir, prefix="model/vqgan/")
    origin = str(folder.checkpoint_dir)
    try:
        vqgan = VQGAN(VQGANConfig.from_dict(scalars["vqgan_config"], origin=origin))
        prep = dict(scalars["preprocessing"])
    except KeyError as exc:
        raise ModelFormatError(f"{origin}: checkpoint lacks {exc}") from None
    load_module("model/vqgan", vqgan, tensors, origin)
    return FirstStage(vqgan, prep, dict(record.get("first_stage") or {}), list(record.get("provenance", [])))
