"""Tiny network configurations for fast tests."""

from __future__ import annotations

from pathlib import Path

import torch

from mrtranslate.models import UNetConfig, VQGANConfig
from mrtranslate.pipeline import ALDMPipeline, PipelineConfig

TINY_VQ = VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, n_embed=32, num_groups=4, spade_nf=8, spade_hidden=8)
TINY_UNET = UNetConfig(model_channels=16, channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=8, num_groups=8)


def tiny_pipeline(seed: int = 0, grid=(32, 32, 32), spacing=(2.0, 2.0, 2.0), first_stage_only: bool = False) -> ALDMPipeline:
    torch.manual_seed(seed)
    cfg = PipelineConfig(
        preprocessing={"spacing_mm": list(spacing), "grid": list(grid), "lower_percentile": 0.5, "upper_percentile": 99.5},
        default_steps=3,
        default_eta=1.0,
        name="tiny-test",
    )
    pipe = ALDMPipeline.from_configs(TINY_VQ, TINY_UNET, config=cfg, first_stage_only=first_stage_only)
    # The UNet's output convs are zero-initialised: give them weights so that sampling does something.
    for m in pipe.modules():
        for p in m.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
    return pipe


def save_tiny(folder: Path, **kwargs) -> Path:
    return tiny_pipeline(**kwargs).save_pretrained(folder)
