"""The first stage: a 3D VQ-GAN (taming-transformers design, every convolution 3D) with MS-SPADE.

Parameter names follow the published checkpoints (``encoder.down.0.block.0.norm1.weight`` ...), so a
converted checkpoint loads without renaming.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFormatError
from .config import MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_CODEBOOK, MAX_LEVELS, ModelConfig, check_int, check_int_tuple
from .layers import GroupNorm32, can_fold_upsample, conv3d, upsample_conv, upsample_nearest2x
from .spade import SPADEGenerator


@dataclasses.dataclass
class VQGANConfig(ModelConfig):
    """Defaults are the published ALDM first stage (the authors' released code)."""

    in_channels: int = 1
    out_channels: int = 1
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 8192
    num_groups: int = 32
    dropout: float = 0.0
    num_classes: int = 4
    spade_nf: int = 128
    spade_hidden: int = 64
    # not published: MS-SPADE's per-(source, target) gate towards the source latent (models/spade.py)
    spade_source_gate: bool = False

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self, origin: str = "vqgan config") -> None:
        check_int(origin, "in_channels", self.in_channels, 1, 16)
        check_int(origin, "out_channels", self.out_channels, 1, 16)
        check_int(origin, "ch", self.ch, 1, MAX_CHANNELS)
        check_int_tuple(origin, "ch_mult", self.ch_mult, 1, 64, MAX_LEVELS)
        check_int(origin, "num_res_blocks", self.num_res_blocks, 1, MAX_BLOCKS)
        check_int(origin, "z_channels", self.z_channels, 1, 256)
        check_int(origin, "embed_dim", self.embed_dim, 1, 256)
        check_int(origin, "n_embed", self.n_embed, 1, MAX_CODEBOOK)
        check_int(origin, "num_groups", self.num_groups, 1, MAX_CHANNELS)
        check_int(origin, "num_classes", self.num_classes, 1, MAX_CLASSES)
        check_int(origin, "spade_nf", self.spade_nf, 1, MAX_CHANNELS)
        check_int(origin, "spade_hidden", self.spade_hidden, 1, MAX_CHANNELS)
        if not isinstance(self.spade_source_gate, bool):
            raise ModelFormatError(f"{origin}: spade_source_gate = {self.spade_source_gate!r} must be true or false")
        for m in self.ch_mult:
            if (self.ch * m) % self.num_groups:
                raise ModelFormatError(f"{origin}: num_groups {self.num_groups} does not divide {self.ch * m} channels")
        super().validate(origin)

    def parameter_estimate(self) -> int:
        widest = self.ch * max(self.ch_mult)
        convs = (2 * self.num_res_blocks + 3) * len(self.ch_mult) * 2 + 8
        spade = 4 * 2 * self.num_classes * (2 * self.spade_nf * self.spade_hidden * 27 * 3)
        return convs * widest * widest * 27 + self.n_embed * self.embed_dim + spade


def _norm(cfg: VQGANConfig, channels: int) -> GroupNorm32:
    return GroupNorm32(cfg.num_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3 -> norm -> swish -> dropout -> conv3, plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, cfg: VQGANConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cfg, cin)
        self.conv1 = conv3d(cin, cout)
        self.norm2 = _norm(cfg, cout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = conv3d(cout, cout)
        self.nin_shortcut = conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    """Zero-pad one voxel at the end of each spatial axis, then a stride-2 3x3x3 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3x3 convolution. At inference (``eval()``) the two run as one transposed
    convolution at the low resolution (``layers.upsample_conv``: the same values up to float rounding, about
    3x fewer operations); ``fused = False`` keeps the two-step form."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3d(channels, channels)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and not self.training and can_fold_upsample(self.conv):
            return upsample_conv(x, self.conv)
        return self.conv(upsample_nearest2x(x))


class _Level(nn.Module):
    """One resolution level: its residual blocks and its resampler (names as in the checkpoints)."""

    def __init__(self, blocks: list[nn.Module], resample_name: str | None, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample_name is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        return x if self.resample_name is None else getattr(self, self.resample_name)(x)


class _Mid(nn.Module):
    def __init__(self, cfg: VQGANConfig, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(cfg, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_1(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = conv3d(cfg.in_channels, cfg.ch)
        levels = []
        cin = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            cout = cfg.ch * m
            blocks = [ResnetBlock(cfg, cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            last = i == len(cfg.ch_mult) - 1
            levels.append(_Level(blocks, None if last else "downsample", None if last else Downsample(cout)))
            cin = cout
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cfg, cin)
        self.norm_out = _norm(cfg, cin)
        self.conv_out = conv3d(cin, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = conv3d(cfg.z_channels, cin)
        self.mid = _Mid(cfg, cin)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(cfg, cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)]
            levels.insert(0, _Level(blocks, "upsample" if i else None, Upsample(cout) if i else None))
            cin = cout
        self.up = nn.ModuleList(levels)  # indexed by level, as in the checkpoints; run deepest first
        self.norm_out = _norm(cfg, cin)
        self.conv_out = conv3d(cin, cfg.out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry by squared Euclidean distance; ties go to the lowest index."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, *spatial]`` of the nearest codebook vectors of ``z`` ``[B, C, *spatial]``."""
        flat = z.movedim(1, -1).reshape(-1, z.shape[1]).float()
        e = self.embedding.weight.float()
        e_sq = e.pow(2).sum(1)
        codes = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        # the distance matrix of a whole latent is large (a 36x48x36 latent and 8192 codes: 2 GB in float32):
        # rows in chunks of at most 2^24 distances; each row's argmin does not depend on the chunking
        rows = max(1, (1 << 24) // max(1, e.shape[0]))
        # ||z||^2 + ||e||^2 - 2 z.e, the expansion the published quantizer uses (same argmin near ties); in
        # float32 even under autocast: a half-precision product would pick a wrong code near ties
        with torch.autocast(device_type=z.device.type, enabled=False):
            for r0 in range(0, flat.shape[0], rows):
                f = flat[r0 : r0 + rows]
                d = f.pow(2).sum(1, keepdim=True) + e_sq - 2.0 * f @ e.t()
                codes[r0 : r0 + rows] = d.argmin(1)
        return codes.view(z.shape[0], *z.shape[2:])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors ``[B, C, *spatial]`` of indices ``[B, *spatial]``."""
        return self.embedding(codes).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.codes(z)
        zq = self.lookup(codes).to(z.dtype)
        # straight-through estimator: the value is zq, the gradient flows to z
        return z + (zq - z).detach(), codes


class VQGAN(nn.Module):
    """Encoder, quantizer, decoder and the switchable MS-SPADE translator of the first stage."""

    def __init__(self, cfg: VQGANConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = conv3d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = conv3d(cfg.embed_dim, cfg.z_channels, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.spade = SPADEGenerator(cfg.num_classes, cfg.embed_dim, cfg.spade_nf, cfg.spade_hidden, cfg.spade_source_gate)

    def add_source_gate(self) -> None:
        """Give MS-SPADE a source gate at 0 (the same outputs until it trains); nothing if it has one."""
        self.spade.add_source_gate()
        self.config = dataclasses.replace(self.config, spade_source_gate=True)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: the latent before quantization."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (quantized latent, codes)."""
        return self.quantize(self.encode_continuous(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image, without re-quantization."""
        return self.decoder(self.post_quant_conv(z))

    def translate_latent(
        self, z: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.spade(z, targets, sources)
