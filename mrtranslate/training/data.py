"""Training data: every subject of a dataset folder, preprocessed once into model space and kept in memory.

Preprocessing is the model's (:mod:`mrtranslate.volumes`, as the authors trained): RAS, crop to a
foreground box, symmetric zero pad / centre crop to the grid, per-modality percentile scaling to [-1, 1]
(not clipped). For training, all modalities of a subject share ONE box, the T1's foreground box as the
authors do (the union of the foregrounds when a subject has no T1), so that source and target stay
voxel-aligned. Values <= 0 are background (real scans can hold small negative values around the brain
from interpolation) and become 0, as at inference. Scans at another spacing (e.g. 1 mm BraTS files for a
2 mm model) are resampled once, when loaded, with the interpolation inference uses
(:func:`~mrtranslate.imaging.resample.resample_to_spacing`).

Sampling is stateless: the batch of step ``k`` on process ``rank`` is a function of ``(seed, k, rank)``
only (:func:`step_generator`), so a resumed run draws exactly the batches an uninterrupted run draws,
without any data-loader state in the checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DatasetLayoutError, GridMismatchError, InputImageError
from ..imaging.layout import Subject, find_subjects
from ..modalities import MODALITIES
from ..imaging.model_space import Preprocessing, load_volume
from ..imaging.resample import foreground_box, is_aligned_at_spacing, ras_reorder, resample_to_spacing

logger = logging.getLogger(__name__)

PHANTOM_MANIFEST = "phantom.json"


@dataclass
class ImageSet:
    """Preprocessed subjects: ``images[n, m]`` is modality ``m`` of subject ``n`` (zeros where missing)."""

    cases: list[str]
    images: torch.Tensor  # [N, M, D, H, W] float32, model intensity scale
    available: torch.Tensor  # [N, M] bool

    def __len__(self) -> int:
        return len(self.cases)


def preprocess_subject(subject: Subject, prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """One subject in model space: images ``[M, *grid]`` (M = 4 modalities, zeros where missing) and availability."""
    ras: dict[str, np.ndarray] = {}
    geometry: tuple[Path, np.ndarray, tuple[int, ...]] | None = None
    for modality, path in subject.files.items():
        vol = load_volume(path, name=f"{subject.case} {modality} ({path.name})")
        data = np.maximum(vol.data, 0)
        to_ras, _, ras_affine, ras_shape = ras_reorder(vol.affine, vol.shape)
        if not is_aligned_at_spacing(ras_affine, prep.spacing_mm):
            data, ras_affine = resample_to_spacing(data, vol.affine, prep.spacing_mm)
            to_ras, ras_shape = nib.orientations.axcodes2ornt(("R", "A", "S")), data.shape
        if geometry is None:
            geometry = (path, ras_affine, ras_shape)
        elif ras_shape != geometry[2] or not np.allclose(ras_affine, geometry[1], atol=1e-3):
            raise GridMismatchError(
                f"subject {subject.case}: {path.name} (shape {ras_shape}, affine {np.round(ras_affine, 3).tolist()}) "
                f"and {geometry[0].name} (shape {geometry[2]}, affine {np.round(geometry[1], 3).tolist()}) are not "
                "on one voxel grid: co-register the modalities of each subject"
            )
        ras[modality] = np.ascontiguousarray(nib.orientations.apply_orientation(data, to_ras))

    if "t1" in ras and (ras["t1"] > 0).any():
        mask = ras["t1"] > 0
    else:
        mask = np.zeros(next(iter(ras.values())).shape, dtype=bool)
        for arr in ras.values():
            mask |= arr > 0
    if not mask.any():
        raise InputImageError(f"subject {subject.case} has no voxel > 0 in any modality: background must be 0")
    lo, hi = foreground_box(mask)
    n, g = hi - lo + 1, np.asarray(prep.grid)
    # The same placement as mrtranslate.volumes (MONAI SpatialPad "symmetric" / CenterSpatialCrop).
    offset = np.where(n <= g, lo - (g - n) // 2, lo + n // 2 - g // 2)
    a = np.maximum(offset, lo)
    b = np.minimum(offset + g, hi + 1)
    src = tuple(slice(int(a[k]), int(max(a[k], b[k]))) for k in range(3))
    dst = tuple(slice(int(a[k] - offset[k]), int(max(a[k], b[k]) - offset[k])) for k in range(3))

    out = torch.zeros((len(MODALITIES), *prep.grid), dtype=torch.float32)
    available = torch.zeros(len(MODALITIES), dtype=torch.bool)
    for modality, arr in ras.items():
        grid = np.zeros(prep.grid, dtype=np.float32)
        grid[dst] = arr[src]
        p_lo, p_hi = (np.float32(p) for p in np.percentile(grid, [prep.lower_percentile, prep.upper_percentile]))
        if not p_hi > p_lo:
            raise InputImageError(
                f"subject {subject.case} {modality}: the {prep.lower_percentile:g}th and {prep.upper_percentile:g}th "
                "percentiles on the model grid are equal: the scan is empty or flat inside the T1 box; check it"
            )
        scaled = ((grid - p_lo) / (p_hi - p_lo)) * np.float32(2) - np.float32(1)
        i = MODALITIES.index(modality)
        out[i] = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
        available[i] = True
    return out, available


def model_foreground(x: torch.Tensor) -> torch.Tensor:
    """The voxels of a scan in model units above the background value -1 (the raw 0 at the 0.5th percentile)."""
    return x > -1


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """The items of process ``rank`` out of ``world_size``: every ``world_size``-th, from ``rank``."""
    return items[rank::world_size]


def dataset_subjects(root: Path | str, min_modalities: int = 1) -> list[Subject]:
    """The subjects of ``root`` with at least ``min_modalities`` modalities (sorted by case)."""
    subjects = find_subjects(root)
    usable = [s for s in subjects if len(s.files) >= min_modalities]
    skipped = len(subjects) - len(usable)
    if skipped:
        logger.warning("%d subject(s) of %s have fewer than %d modalities and are skipped", skipped, root, min_modalities)
    if not usable:
        raise DatasetLayoutError(
            f"no subject of {root} has {min_modalities} or more modalities: translation pairs need at least two scans "
            "of one subject"
        )
    return usable


def load_images(
    subjects: list[Subject], prep: Preprocessing, rank: int = 0, world_size: int = 1, progress: bool = True
) -> ImageSet:
    """Preprocess this process's shard of ``subjects`` (see :func:`shard`) into an in-memory ImageSet."""
    mine = shard(subjects, rank, world_size)
    if not mine:
        raise DatasetLayoutError(
            f"{len(subjects)} subject(s) cannot be shared by {world_size} processes: use fewer processes or more data"
        )
    grid = tuple(prep.grid)
    nbytes = len(mine) * len(MODALITIES) * int(np.prod(grid)) * 4
    logger.info("preprocessing %d subjects (%.1f GB in memory)", len(mine), nbytes / 1e9)
    images = torch.zeros((len(mine), len(MODALITIES), *grid), dtype=torch.float32)
    available = torch.zeros((len(mine), len(MODALITIES)), dtype=torch.bool)
    for i, subject in enumerate(tqdm(mine, desc="preprocessing", unit="subject", disable=not progress, leave=False)):
        images[i], available[i] = preprocess_subject(subject, prep)
    return ImageSet([s.case for s in mine], images, available)


def describe_dataset(root: Path | str, subjects: list[Subject]) -> dict[str, Any]:
    """What the model card says about the data: folder, subject count, case names, phantom manifest if any."""
    root = Path(root).resolve()
    info: dict[str, Any] = {"folder": str(root), "n_subjects": len(subjects), "cases": [s.case for s in subjects]}
    manifest = root / PHANTOM_MANIFEST
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            m = None
        if isinstance(m, dict):
            keys = ("generator", "n", "seed", "spacing_mm", "grid", "tumor_fraction", "blur")
            info["phantom"] = {k: m[k] for k in keys if k in m}
    return info


# -- stateless, step-indexed sampling ---------------------------------------------------------------
def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state is a function of ``(seed, step, rank, stream)`` only."""
    state = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def sample_scans(available: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (subject, modality) picks: a subject uniformly, then one of its modalities uniformly."""
    subjects = torch.randint(len(available), (n,), generator=gen)
    mods = torch.empty(n, dtype=torch.long)
    for i, s in enumerate(subjects.tolist()):
        have = available[s].nonzero(as_tuple=True)[0]
        mods[i] = have[torch.randint(len(have), (1,), generator=gen)]
    return subjects, mods


def sample_pairs(
    available: torch.Tensor, n: int, gen: torch.Generator, weights: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random (subject, source, target) triples: a subject with 2+ modalities, two distinct modalities.

    ``weights`` (a source x target matrix, see ``config.pair_weight_matrix``): each subject's pair is drawn with
    probability proportional to its weight among the pairs that subject has; None: all its pairs alike.
    ``allowed`` (``[subjects, source, target]`` bool): pairs that may be drawn at all; None: every pair.
    """
    if allowed is not None and not bool(allowed.all()):
        ones = torch.ones(available.shape[1], available.shape[1]) - torch.eye(available.shape[1])
        weights = (ones if weights is None else weights)[None] * allowed.to(ones.dtype)
    if weights is None:
        eligible = (available.sum(1) >= 2).nonzero(as_tuple=True)[0]
    else:  # each subject's weight of each (source, target) pair it has, flattened
        has = available.to(weights.dtype)
        pair_probs = (has[:, :, None] * weights * has[:, None, :]).flatten(1)  # weights: [M, M] or [N, M, M]
        eligible = (pair_probs.sum(1) > 0).nonzero(as_tuple=True)[0]
    if len(eligible) == 0:
        raise DatasetLayoutError("no subject in this process's share of the data has two modalities to pair"
                                 + ("" if weights is None else " with a pair of weight > 0 (pair_weights)"))
    subjects = eligible[torch.randint(len(eligible), (n,), generator=gen)]
    src = torch.empty(n, dtype=torch.long)
    tgt = torch.empty(n, dtype=torch.long)
    for i, s in enumerate(subjects.tolist()):
        if weights is None:
            have = available[s].nonzero(as_tuple=True)[0]
            order = torch.randperm(len(have), generator=gen)
            src[i], tgt[i] = have[order[0]], have[order[1]]
        else:
            k = int(torch.multinomial(pair_probs[s], 1, generator=gen))
            src[i], tgt[i] = divmod(k, weights.shape[-1])
    return subjects, src, tgt


def random_crops(volumes: torch.Tensor, crop: list[int] | None, gen: torch.Generator) -> torch.Tensor:
    """Random crops ``[B, 1, *crop]`` of ``volumes`` ``[B, D, H, W]`` (whole volumes when ``crop`` is None)."""
    if crop is None:
        return volumes[:, None].clone()
    sides = volumes.shape[1:]
    out = torch.empty((volumes.shape[0], 1, *crop), dtype=volumes.dtype)
    for i in range(volumes.shape[0]):
        o = crop_offsets(sides, crop, gen)
        out[i, 0] = volumes[i, o[0] : o[0] + crop[0], o[1] : o[1] + crop[1], o[2] : o[2] + crop[2]]
    return out


def random_flips(volumes: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Each sample of ``volumes`` ``[B, C, D, H, W]`` flipped along each spatial axis with probability ``prob``,
    independently (as the authors' three MONAI ``RandFlipd``, one per axis). No draw at all when ``prob`` is 0."""
    if prob <= 0:
        return volumes
    flips = torch.rand((volumes.shape[0], 3), generator=gen) < prob
    out = volumes.clone()
    for i, axes in enumerate(flips.tolist()):
        dims = [2 + a for a, flip in enumerate(axes) if flip]
        if dims:
            out[i] = volumes[i : i + 1].flip(dims)[0]
    return out


def crop_offsets(sides: Sequence[int], crop: Sequence[int], gen: torch.Generator, align: int = 1) -> list[int]:
    """A random start of a ``crop`` inside ``sides`` on every axis, a multiple of ``align`` (1: any voxel)."""
    return [int(torch.randint((s - c) // align + 1, (1,), generator=gen)) * align
            for s, c in zip(sides, crop, strict=True)]
