"""The detail refiner: a small residual CNN on the input's own fine grid (not published).

ALDM works on a coarse model grid (2 mm for ``brats-2mm``); an output resampled back onto a 1 mm input is
smooth where the source shows edges. The refiner takes the source scan and the output on the input grid,
with the source and target classes, and predicts a correction to the output: ``output + head(body(...))``.
Its head starts at zero, so an untrained refiner returns the output unchanged. Dilated 3x3x3 convolutions
give it a receptive field of ``2 * halo + 1`` voxels per axis (23 at the defaults) for about 70 kFLOP per voxel.

A pure module: arrays of any size in, the same size out (zero padding at the borders); the pipeline
(:mod:`mrtranslate.pipeline.refine`) normalises the inputs and runs it slab by slab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ModelFormatError
from ..modalities import canonical
from .config import MAX_CHANNELS, MAX_CLASSES, ModelConfig, check_int, check_int_tuple


@dataclasses.dataclass
class RefinerConfig(ModelConfig):
    """``channels`` wide, one 3x3x3 convolution in, then one per entry of ``dilations``; ``num_classes``
    modalities. ``max_input_spacing_mm``: the refiner runs on inputs whose every voxel side is at most this
    (the grids it was trained on); coarser inputs get the output as decoded. ``targets``: the target
    modalities whose outputs the network refines (empty: every target).

    ``guide_sigma_mm`` > 0 adds a guided detail transfer (:mod:`mrtranslate.pipeline.guided`, no weights) after
    the network, with Gaussian windows of that width and regularisation ``guide_eps``, for ``guide_targets``
    (empty: every target), on the same inputs. 0: no transfer (format version 1)."""

    FORMAT_VERSION: ClassVar[int] = 2

    num_classes: int = 4
    channels: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 2, 1)
    max_input_spacing_mm: float = 1.5
    targets: tuple[str, ...] = ()
    guide_sigma_mm: float = 0.0
    guide_eps: float = 0.003
    guide_targets: tuple[str, ...] = ()

    def validate(self, origin: str = "refiner config") -> None:
        check_int(origin, "num_classes", self.num_classes, 1, MAX_CLASSES)
        check_int(origin, "channels", self.channels, 1, MAX_CHANNELS)
        check_int_tuple(origin, "dilations", self.dilations, 1, 64, 32)
        s = self.max_input_spacing_mm
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.05 <= float(s) <= 20:
            raise ModelFormatError(f"{origin}: max_input_spacing_mm = {s!r} must be a number in [0.05, 20]")
        self.targets = _modality_names(origin, "targets", self.targets)
        self.guide_targets = _modality_names(origin, "guide_targets", self.guide_targets)
        for name, value, lo, hi in (("guide_sigma_mm", self.guide_sigma_mm, 0.0, 20.0),
                                    ("guide_eps", self.guide_eps, 1e-8, 10.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
                raise ModelFormatError(f"{origin}: {name} = {value!r} must be a number in [{lo:g}, {hi:g}]")
        super().validate(origin)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # a refiner without the guided transfer stays readable by versions that predate it; one with it needs a
        # version that runs it (older ones refuse it instead of silently writing other outputs)
        d["_format_version"] = self.FORMAT_VERSION if self.guides_any else 1
        return d

    @property
    def guides_any(self) -> bool:
        """Whether the guided detail transfer is on."""
        return float(self.guide_sigma_mm) > 0

    def parameter_estimate(self) -> int:
        c = self.channels
        return 2 * 27 * c + 2 * self.num_classes * c + len(self.dilations) * 27 * c * c + 2 * c

    def refines(self, target: str) -> bool:
        """Whether outputs of ``target`` (a canonical modality name) are refined: by the network or the guided
        transfer."""
        return self.net_refines(target) or self.guides(target)

    def net_refines(self, target: str) -> bool:
        """Whether the network refines outputs of ``target``."""
        return not self.targets or target in self.targets

    def guides(self, target: str) -> bool:
        """Whether the guided detail transfer runs on outputs of ``target``."""
        return self.guides_any and (not self.guide_targets or target in self.guide_targets)

    @property
    def halo(self) -> int:
        """Voxels on each side that reach an output voxel: the receptive field's radius."""
        return 1 + sum(self.dilations)


def _modality_names(origin: str, name: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, (tuple, list)) or len(values) > MAX_CLASSES:
        raise ModelFormatError(f"{origin}: {name} must be a list of modality names")
    try:
        return tuple(dict.fromkeys(canonical(str(t)) for t in values))
    except Exception as exc:  # noqa: BLE001 - reported as a format error of the config
        raise ModelFormatError(f"{origin}: {name}: {exc}") from None


class Refiner(nn.Module):
    """``refined = output + correction(source, output, source class, target class)``; see the module docstring."""

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = c = config or RefinerConfig()
        self.conv_in = nn.Conv3d(2, c.channels, 3, padding=1)
        # the classes enter as biases of the first layer's output (a constant one-hot channel would cost a full
        # input channel per class and the same function away from the borders)
        self.source_embed = nn.Embedding(c.num_classes, c.channels)
        self.target_embed = nn.Embedding(c.num_classes, c.channels)
        self.body = nn.ModuleList(nn.Conv3d(c.channels, c.channels, 3, padding=d, dilation=d) for d in c.dilations)
        self.act = nn.LeakyReLU(0.1, inplace=True)  # on each convolution's own output: one buffer less
        self.head = nn.Conv3d(c.channels, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for emb in (self.source_embed, self.target_embed):
            nn.init.zeros_(emb.weight)

    def forward(self, source: torch.Tensor, output: torch.Tensor, source_class: torch.Tensor,
                target_class: torch.Tensor) -> torch.Tensor:
        """``source``, ``output``: ``[B, 1, D, H, W]``; classes ``[B]`` (long). Returns ``[B, 1, D, H, W]``."""
        h = self.conv_in(torch.cat([source, output], dim=1))
        bias = self.source_embed(source_class) + self.target_embed(target_class)
        h = self.act(h + bias[:, :, None, None, None].to(h.dtype))
        for conv in self.body:
            h = self.act(conv(h))
        return output + self.head(h)
