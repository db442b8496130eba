"""The 3D diffusion UNet of ALDM (guided-diffusion / LDM ``openaimodel`` design), class-conditioned.

Parameter names follow the published checkpoints (``input_blocks.1.0.in_layers.0.weight`` ...).
Attention runs through ``scaled_dot_product_attention`` with the checkpoints' head-major qkv layout.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFormatError
from .config import MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_LEVELS, ModelConfig, check_int, check_int_tuple
from .layers import GroupNorm32, can_fold_upsample, conv3d, timestep_embedding, upsample_conv, upsample_nearest2x


@dataclasses.dataclass
class UNetConfig(ModelConfig):
    """Defaults are the published ALDM UNet (the authors' released code)."""

    in_channels: int = 12
    out_channels: int = 4
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (4, 2)
    num_head_channels: int = 32
    num_heads: int = -1
    num_classes: int = 4
    num_groups: int = 32
    dropout: float = 0.0

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def heads(self, channels: int) -> int:
        if self.num_head_channels > 0:
            return channels // self.num_head_channels
        return self.num_heads

    def validate(self, origin: str = "unet config") -> None:
        check_int(origin, "in_channels", self.in_channels, 1, 1024)
        check_int(origin, "out_channels", self.out_channels, 1, 1024)
        check_int(origin, "model_channels", self.model_channels, 1, MAX_CHANNELS)
        check_int_tuple(origin, "channel_mult", self.channel_mult, 1, 64, MAX_LEVELS)
        check_int(origin, "num_res_blocks", self.num_res_blocks, 1, MAX_BLOCKS)
        if self.attention_resolutions:
            check_int_tuple(origin, "attention_resolutions", self.attention_resolutions, 1, 1 << MAX_LEVELS, MAX_LEVELS)
        check_int(origin, "num_classes", self.num_classes, 0, MAX_CLASSES)
        check_int(origin, "num_groups", self.num_groups, 1, MAX_CHANNELS)
        if self.num_head_channels <= 0 and self.num_heads <= 0:
            raise ModelFormatError(f"{origin}: set num_head_channels or num_heads to a positive value")
        for m in self.channel_mult:
            c = m * self.model_channels
            if c % self.num_groups:
                raise ModelFormatError(f"{origin}: num_groups {self.num_groups} does not divide {c} channels")
            if self.num_head_channels > 0 and c % self.num_head_channels:
                raise ModelFormatError(f"{origin}: num_head_channels {self.num_head_channels} does not divide {c}")
        super().validate(origin)

    def parameter_estimate(self) -> int:
        widest = self.model_channels * max(self.channel_mult)
        blocks = (3 * self.num_res_blocks + 4) * len(self.channel_mult)
        return blocks * 4 * widest * widest * 27 + 8 * self.model_channels**2


class ResBlock(nn.Module):
    """in_layers (norm, SiLU, conv) + timestep projection, out_layers (norm, SiLU, dropout, conv), skip."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(cfg.num_groups, cin), nn.SiLU(), conv3d(cin, cout))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            GroupNorm32(cfg.num_groups, cout), nn.SiLU(), nn.Dropout(cfg.dropout), conv3d(cout, cout)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels; qkv channels are head-major: per head [q | k | v], each of width d."""

    def __init__(self, cfg: UNetConfig, channels: int):
        super().__init__()
        self.num_heads = cfg.heads(channels)
        self.norm = GroupNorm32(cfg.num_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        n = flat.shape[-1]
        qkv = self.qkv(self.norm(flat))  # [B, 3C, N]
        d = c // self.num_heads
        # each [B, H, N, d], made contiguous: the fused kernels (flash / memory-efficient) need a unit stride in
        # d; with strided inputs SDPA falls back to its unfused float32 path (measured 4x slower on an H100)
        q, k, v = (t.contiguous() for t in qkv.reshape(b, self.num_heads, 3, d, n).transpose(-1, -2).unbind(2))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        h = h.transpose(-1, -2).reshape(b, c, n)
        return (flat + self.proj_out(h)).reshape(x.shape)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3x3 convolution. At inference (``eval()``) the two run as one transposed
    convolution at the low resolution (``layers.upsample_conv``: the same values up to float rounding, about
    3x fewer operations); ``fused = False`` keeps the two-step form."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3d(channels, channels)
        self.fused = True

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused and not self.training and can_fold_upsample(self.conv):
            return upsample_conv(x, self.conv)
        return self.conv(upsample_nearest2x(x))


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x


class UNet(nn.Module):
    """``unet(x, t, y)``: noise prediction for latent ``x`` (with its conditioning channels) at timesteps ``t``
    for target classes ``y``."""

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or UNetConfig()
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None

        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([EmbedSequential(conv3d(cfg.in_channels, ch))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(cfg, ch, mult * mc, emb_dim)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(cfg, ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(
            ResBlock(cfg, ch, ch, emb_dim), AttentionBlock(cfg, ch), ResBlock(cfg, ch, ch, emb_dim)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(cfg, ch + skip_channels.pop(), mc * mult, emb_dim)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(cfg, ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(cfg.num_groups, ch), nn.SiLU(), conv3d(cfg.channel_mult[0] * mc, cfg.out_channels))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1).to(x.device)
        if t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype))
        if self.label_emb is not None:
            if y is None:
                raise ValueError("this UNet is class-conditioned: pass the target classes y")
            emb = emb + self.label_emb(y.reshape(-1).to(x.device))
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
