"""Tiny datasets and tiny training configs for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from _tiny import TINY_UNET, TINY_VQ

# Phantoms at 8 mm: a 32^3 grid holding a brain of about 18 x 22 x 18 voxels.
PHANTOM_SPACING = 8.0
PHANTOM_PREP = {"spacing_mm": [8.0] * 3, "grid": [20, 24, 20], "lower_percentile": 0.5, "upper_percentile": 99.5}

# Synthetic subjects (nested ellipsoids) for layout and preprocessing edge cases.
SPACING = 4.0
SHAPE = (20, 22, 18)
PREP = {"spacing_mm": [SPACING] * 3, "grid": [16, 16, 16], "lower_percentile": 0.5, "upper_percentile": 99.5}
CONTRASTS = {"t1": (60.0, 100.0), "t1ce": (70.0, 110.0), "t2": (120.0, 50.0), "flair": (90.0, 40.0)}
NAMES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def subject_arrays(index: int, shape: tuple[int, int, int] = SHAPE) -> dict[str, np.ndarray]:
    """Two nested ellipsoids with per-modality contrast, shifted and noised per subject; background exactly 0.

    T2 and FLAIR reach one voxel further than T1 along the first axis, so a shared T1 box is observable.
    """
    rng = np.random.default_rng(index)
    c = np.asarray(shape) / 2 + rng.uniform(-1.0, 1.0, 3)
    r = np.asarray(shape) * rng.uniform(0.3, 0.36, 3)
    idx = np.indices(shape).astype(np.float64)
    d = sum(((idx[k] - c[k]) / r[k]) ** 2 for k in range(3))
    wide = sum(((idx[k] - c[k]) / (r[k] + (2.0 if k == 0 else 0.0))) ** 2 for k in range(3))
    out = {}
    for m, (shell, core) in CONTRASTS.items():
        inside = (d < 1) if m in ("t1", "t1ce") else (wide < 1)
        v = np.where(inside, shell, 0.0) + np.where(d < 0.35, core - shell, 0.0)
        v = v + inside * rng.normal(0, 4.0, shape)
        out[m] = (np.clip(v, 1.0, None) * inside).astype(np.float32)
    return out


def write_subjects(root: Path, n: int = 2, layout: str = "2021", spacing: float = SPACING,
                   missing: dict[int, str] | None = None) -> Path:
    """``n`` subjects in the BraTS 2021 (``<case>_t1.nii.gz``) or 2023 (``<case>-t1n.nii.gz``) layout.

    The affine is LAS (x flipped) so that reading exercises the reorientation to RAS. ``missing`` maps a
    subject index to a modality left out.
    """
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [40.0, -50.0, -30.0]
    for i in range(n):
        case = f"BraTS2021_{i:05d}" if layout == "2021" else f"BraTS-GLI-{i:05d}-000"
        folder = root / case
        folder.mkdir(parents=True, exist_ok=True)
        for m, arr in subject_arrays(i).items():
            if (missing or {}).get(i) == m:
                continue
            name = f"{case}_{m}.nii.gz" if layout == "2021" else f"{case}-{NAMES_2023[m]}.nii.gz"
            nib.save(nib.Nifti1Image(arr, affine), folder / name)
    return root


def autoencoder_config(**kw) -> dict:
    cfg = {"model": TINY_VQ.to_dict(), "preprocessing": PHANTOM_PREP, "crop": [8, 8, 8], "batch_size": 2,
           "lr": 1e-3, "steps": 4, "log_every": 1, "seed": 3,
           # the values of these settings before their defaults became the published ones
           "scale_lr": False, "codebook_weight": 1.0, "flip_prob": 0.0, "codebook_init": "normal"}
    cfg.update(kw)
    return cfg


def spade_config(**kw) -> dict:
    cfg = {"batch_size": 2, "lr": 1e-3, "steps": 4, "log_every": 1, "disc_channels": 4, "seed": 5, "scale_lr": False,
           "adv_weight": 1.0}
    cfg.update(kw)
    return cfg


def diffusion_config(**kw) -> dict:
    cfg = {"model": TINY_UNET.to_dict(), "batch_size": 2, "lr": 1e-3, "steps": 4, "log_every": 1, "seed": 7,
           "ema_decay": 0.9, "scale_lr": False}
    cfg.update(kw)
    return cfg


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def checkpoint_differences(run_a: Path, run_b: Path) -> list[str]:
    """Names of the checkpoint entries (tensors, optimizer scalars, step) that differ between two runs."""
    from mrtranslate.training.checkpoint import load_checkpoint

    ta, sa = load_checkpoint(Path(run_a) / "checkpoint")
    tb, sb = load_checkpoint(Path(run_b) / "checkpoint")
    diff = sorted(set(ta) ^ set(tb))
    diff += [k for k in sorted(set(ta) & set(tb)) if not torch.equal(ta[k], tb[k])]
    for key in ("step", "optimizers", "ema_updates"):
        if sa.get(key) != sb.get(key):
            diff.append(key)
    return diff
