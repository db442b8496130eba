"""Running the detail refiner (:mod:`mrtranslate.models.refiner`) on an output, on the input's own grid.

Tensors in, tensors out. The refiner sees the source scaled as the metrics scale images (its 0.5th and
99.5th brain percentiles at 0 and 1, clipped to [0, 1.5]) and the output in its own intensity units. It runs
only inside the output's foreground box, slab by slab along the first axis with ``halo`` voxels of context on
each side, so that memory stays bounded and the result equals one pass over the whole box (to float
rounding). Where the refiner's config asks for it, the guided detail transfer (:mod:`.guided`) then runs on
the network's result, with the same scaled source. The refined output is clipped at 0 and stays 0 outside the
output's foreground, as every output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..models.refiner import Refiner
from .guided import guided_transfer, window_radius

__all__ = ["SOURCE_CLIP", "applies", "refine", "scaled_source"]

#: The scaled source is clipped to [0, SOURCE_CLIP]: the brightest voxels (vessels, enhancement) stay bounded.
SOURCE_CLIP = 1.5
#: Slices per slab (plus the halo on each side).
SLAB = 48


def applies(refiner: Refiner | None, spacing: Sequence[float], target: str | None = None) -> bool:
    """Whether ``refiner`` runs on an input of voxel ``spacing`` (mm): every side at most its
    ``max_input_spacing_mm``; with ``target``, also whether it refines that target."""
    if refiner is None or max(float(s) for s in spacing) > refiner.config.max_input_spacing_mm + 1e-6:
        return False
    return target is None or refiner.config.refines(target)


def scaled_source(source: torch.Tensor, box: tuple[slice, ...] | None = None) -> torch.Tensor:
    """``source`` with its 0.5th and 99.5th percentiles over voxels > 0 at 0 and 1, clipped to [0, SOURCE_CLIP],
    0 where the source is not > 0 (numpy's linear percentiles, as :mod:`mrtranslate.evaluation.metrics`); with
    ``box``, only that part of it (the percentiles still those of the whole source)."""
    s = source.detach().to("cpu", torch.float32)
    values = s[s > 0]
    part = s if box is None else s[box]
    if not values.numel():
        return torch.zeros_like(part)
    lo, hi = np.percentile(values.numpy(), (0.5, 99.5))
    width = float(hi - lo) if hi > lo else 1.0
    return ((part - float(lo)) / width).clamp(0, SOURCE_CLIP) * (part > 0)


def _box(mask: torch.Tensor, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s True voxels widened by ``margin`` on each side (within the array); None
    when there is none. Per-axis reductions: no index array of every voxel."""
    out = []
    for axis in range(mask.dim()):
        others = tuple(a for a in range(mask.dim()) if a != axis)
        hits = mask.any(dim=others).nonzero()
        if hits.numel() == 0:
            return None
        lo, hi = int(hits[0]), int(hits[-1])
        out.append(slice(max(lo - margin, 0), min(hi + margin + 1, mask.shape[axis])))
    return tuple(out)


@torch.no_grad()
def refine(refiner: Refiner, source: torch.Tensor, output: torch.Tensor, source_class: int, target_class: int,
           *, spacing: Sequence[float] | None = None, target: str | None = None, slab: int = SLAB) -> torch.Tensor:
    """The refined ``output`` (``[D, H, W]``, on the grid of ``source``, ``[D, H, W]``), float32 on the CPU.

    ``source_class``/``target_class``: the modalities' class ids. ``target`` (the target's canonical name):
    run only the steps the config gives this target (None: the network alone, whatever the config).
    ``spacing``: the grid's voxel sides in mm, needed where the guided transfer runs. The network runs on the
    refiner's device, in float32."""
    if tuple(source.shape) != tuple(output.shape):
        raise ValueError(f"source {tuple(source.shape)} and output {tuple(output.shape)} must share one grid")
    config = refiner.config
    net = target is None or config.net_refines(target)
    guide = target is not None and config.guides(target)
    if guide and (spacing is None or len(spacing) != 3):
        raise ValueError("the guided detail transfer needs the grid's three voxel spacings")
    out = output.detach().to("cpu", torch.float32).clone()
    foreground = out > 0
    margin = max(config.halo if net else 0, max(window_radius(config.guide_sigma_mm, spacing)) if guide else 0)
    box = _box(foreground, margin)
    if box is None or not (net or guide):
        return out
    s_box = scaled_source(source, box)
    o_box = out[box]
    if net:
        o_box = _network(refiner, s_box, o_box, source_class, target_class, slab) * foreground[box]
    if guide:
        o_box = guided_transfer(s_box, o_box, config.guide_sigma_mm, config.guide_eps, spacing)
    out[box] = o_box
    return out


def _network(refiner: Refiner, s_box: torch.Tensor, o_box: torch.Tensor, source_class: int, target_class: int,
             slab: int) -> torch.Tensor:
    """The network's refinement of ``o_box`` (clipped at 0), slab by slab along the first axis."""
    halo = refiner.config.halo
    device = next(refiner.parameters()).device
    classes = (torch.tensor([source_class], device=device), torch.tensor([target_class], device=device))
    layout = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    n = o_box.shape[0]
    pieces = []
    for start in range(0, n, slab):
        a, b = max(0, start - halo), min(n, start + slab + halo)
        s = s_box[a:b][None, None].to(device, torch.float32).contiguous(memory_format=layout)
        o = o_box[a:b][None, None].to(device, torch.float32).contiguous(memory_format=layout)
        y = refiner(s, o, *classes)[0, 0]
        pieces.append(y[start - a: start - a + min(slab, n - start)].float().cpu())
    return torch.cat(pieces, 0).clamp_min(0)
