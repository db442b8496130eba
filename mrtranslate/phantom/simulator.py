"""Multi-contrast brain phantoms (T1, T1ce, T2, FLAIR, tumour labels) in the BraTS 2021 layout.

A subject is a deformed ICBM 2009a template (``anatomy``) whose voxels mix tissues with 3 T
relaxation parameters (``physics``), optionally with a glioma (``tumor``), imaged by
per-subject random protocols and acquisition effects (``acquisition``).

All randomness of subject ``index`` comes from ``SeedSequence(seed, spawn_key=(index,))``, so a subject is
the same whether made alone, among 3 or 40, serially or by ``workers`` processes.

>>> subject = simulate_subject(seed=0, index=0, spacing=2.0)      # doctest: +SKIP
>>> write_dataset("data/", n=40, seed=0, spacing=2.0, workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import numbers
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..modalities import MODALITIES
from .acquisition import (
    add_rician_noise,
    apply_psf,
    bias_field,
    brain_percentile,
    draw_acquisition,
    finish,
)
from .anatomy import (
    SmoothFieldSampler,
    default_grid,
    draw_spatial,
    grid_affine,
    load_template,
    require_train_extra,
    sample_maps,
    template_coordinates,
)
from .physics import draw_sequences, draw_tissues, mix_signals
from .tumor import compose_tissues, draw_tumor, tumor_fractions

logger = logging.getLogger(__name__)

DEFORMATION_NODE_MM = 24.0  # control-point spacing of the nonlinear deformation
TUMOR_SHAPE_NODE_MM = 12.0  # of the tumour's irregularity
BIAS_NODE_MM = 48.0  # of the bias field (coil sensitivities vary over several centimetres)
MANIFEST_NAME = "phantom.json"


@dataclass
class PhantomSubject:
    """One simulated subject: images per modality, label map, tissue fractions, grid and parameters.

    ``images`` maps t1, t1ce, t2, flair to float32 arrays (zero outside the brain); ``seg`` holds BraTS
    labels (1 necrosis, 2 oedema, 4 enhancing) as uint8; ``tissues`` the partial-volume fraction of each
    tissue class; ``affine`` the shared RAS voxel-to-mm matrix; ``parameters`` everything drawn (JSON-able).
    """

    case: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    mask: np.ndarray
    tissues: dict[str, np.ndarray]
    affine: np.ndarray
    parameters: dict[str, Any]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.seg if key == "seg" else self.images[key]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.seg.shape

    def file_names(self) -> dict[str, str]:
        """BraTS 2021 file names of this subject, by modality and ``seg``."""
        return {key: f"{self.case}_{key}.nii.gz" for key in (*MODALITIES, "seg")}

    def write(self, out_dir: Path | str) -> Path:
        """Write ``<out_dir>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` and the parameters; return the folder.

        Files are gzip-compressed with mtime 0, so that one seed gives byte-identical files.
        """
        folder = Path(out_dir) / self.case
        folder.mkdir(parents=True, exist_ok=True)
        names = self.file_names()
        for key in (*MODALITIES, "seg"):
            (folder / names[key]).write_bytes(nifti_gz_bytes(self[key], self.affine))
        params = json.dumps(self.parameters, indent=1, sort_keys=True) + "\n"
        (folder / f"{self.case}_phantom.json").write_text(params, encoding="utf-8")
        return folder


def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzip-compressed NIfTI-1 file as bytes, reproducible byte for byte (gzip mtime 0, no file name)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"mrtranslate phantom"
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)  # nibabel's default level


def case_name(seed: int, index: int) -> str:
    return f"Phantom_{seed}_{index:05d}"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_common(spacing: float, tumor_fraction: float, grid: tuple[int, int, int] | None) -> tuple[int, ...]:
    if not isinstance(spacing, numbers.Real) or not 0.5 <= float(spacing) <= 8.0:
        raise UsageError(f"spacing must be between 0.5 and 8 mm, got {spacing!r}")
    if not isinstance(tumor_fraction, numbers.Real) or not 0.0 <= float(tumor_fraction) <= 1.0:
        raise UsageError(f"tumor fraction must be between 0 and 1, got {tumor_fraction!r}")
    if grid is None:
        return default_grid(float(spacing))
    sides = tuple(grid)
    if len(sides) != 3 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 8 for s in sides):
        raise UsageError(f"grid must be three integers >= 8 (voxels along R-L, A-P, I-S), got {grid!r}")
    return tuple(int(s) for s in sides)


def simulate_subject(
    seed: int,
    index: int = 0,
    spacing: float = 2.0,
    tumor: bool | None = None,
    *,
    tumor_fraction: float = 0.5,
    grid: tuple[int, int, int] | None = None,
    blur: bool = True,
) -> PhantomSubject:
    """Simulate subject ``index`` of the phantom dataset ``seed`` on an isotropic grid of ``spacing`` mm.

    ``tumor``: True or False forces a tumour or none; None draws one with probability ``tumor_fraction``.
    ``grid``: voxels along R-L, A-P, I-S, centred on the brain (default: ``default_grid(spacing)``).
    ``blur``: apply a random point-spread blur per contrast.
    """
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    shape = _check_common(spacing, tumor_fraction, grid)
    require_train_extra()
    spacing = float(spacing)
    affine = grid_affine(spacing, shape)
    streams = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(6)
    decide, anatomy_rng, contrast_rng, tumor_rng, acquisition_rng, noise_rng = map(np.random.default_rng, streams)
    has_tumor = bool(decide.uniform() < tumor_fraction) if tumor is None else bool(tumor)

    # Anatomy: output voxel -> template point (affine + smooth deformation), tumour, tissue fractions.
    template = load_template(spacing)
    spatial = draw_spatial(anatomy_rng)
    deformation = SmoothFieldSampler(affine, shape, DEFORMATION_NODE_MM)
    displacement = [deformation.sample(anatomy_rng, spatial.deformation_mm) for _ in range(3)]
    coords = template_coordinates(spatial, displacement, affine, shape)
    del displacement
    tumor_draw = draw_tumor(tumor_rng, template) if has_tumor else None
    fractions = None
    if tumor_draw is not None:
        shape_fields = SmoothFieldSampler(affine, shape, TUMOR_SHAPE_NODE_MM)
        fractions = tumor_fractions(tumor_draw, coords, shape_fields, tumor_rng, spacing)
    normal = sample_maps(template, coords)
    del coords
    mask = normal["brain"] >= 0.5
    tissues, seg = compose_tissues(normal, fractions)
    seg[~mask] = 0

    # Contrast: tissue parameters and protocol, then acquisition effects per contrast.
    tissue_params = draw_tissues(contrast_rng)
    sequences = draw_sequences(contrast_rng)
    bias_fields = SmoothFieldSampler(affine, shape, BIAS_NODE_MM)
    acquisitions = {name: draw_acquisition(acquisition_rng, blur) for name in ("t1", "t2", "flair")}
    acquisitions["t1ce"] = acquisitions["t1"]  # the same sequence, coil and scaling, after contrast
    biases = {name: bias_field(bias_fields, acquisition_rng, acquisitions[name]) for name in ("t1", "t2", "flair")}
    biases["t1ce"] = biases["t1"]
    images: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    sigmas: dict[str, float] = {}
    for name in MODALITIES:
        draw = acquisitions[name]
        clean = mix_signals(tissues, tissue_params, sequences[name])
        clean *= biases[name]
        clean = apply_psf(clean, draw.blur_sigma_mm, spacing)
        noisy, sigmas[name] = add_rician_noise(clean, mask, draw.snr, noise_rng)
        if name != "t1ce":
            reference = brain_percentile(noisy, mask)
            scales[name] = draw.scale_target / reference if reference > 0 else 1.0
        else:
            scales[name] = scales["t1"]
        images[name] = finish(noisy, mask, scales[name])

    case = case_name(seed, index)
    parameters: dict[str, Any] = {
        "generator": f"mrtranslate {__version__} phantom",
        "case": case,
        "seed": seed,
        "index": index,
        "spacing_mm": spacing,
        "grid": list(shape),
        "tumor": has_tumor,
        "spatial": asdict(spatial),
        "tissues": {name: asdict(t) for name, t in tissue_params.items()},
        "sequences": {name: s.as_dict() for name, s in sequences.items()},
        "acquisition": {
            name: {**acquisitions[name].as_dict(), "noise_sigma": sigmas[name], "scale": scales[name]}
            for name in MODALITIES
        },
        "tumor_geometry": tumor_draw.as_dict() if tumor_draw is not None else None,
    }
    return PhantomSubject(
        case=case, images=images, seg=seg, mask=mask, tissues=tissues, affine=affine, parameters=parameters
    )


def _init_worker() -> None:
    """One torch thread per worker process: the workers already use the cores."""
    import torch

    torch.set_num_threads(1)


def _write_one(job: tuple[Path, int, int, float, float, tuple[int, int, int] | None, bool]) -> Path:
    out_dir, seed, index, spacing, tumor_fraction, grid, blur = job
    subject = simulate_subject(seed, index, spacing, tumor_fraction=tumor_fraction, grid=grid, blur=blur)
    return subject.write(out_dir)


def write_dataset(
    out_dir: Path | str,
    n: int,
    seed: int = 0,
    spacing: float = 2.0,
    tumor_fraction: float = 0.5,
    workers: int = 1,
    progress: bool = True,
    *,
    grid: tuple[int, int, int] | None = None,
    blur: bool = True,
) -> list[Path]:
    """Write subjects 0..n-1 of phantom dataset ``seed`` in the BraTS 2021 layout; return their folders.

    ``workers`` > 1 simulates subjects in that many processes (output identical to serial). A
    ``phantom.json`` beside the subjects records the arguments. Existing subject folders are overwritten.
    """
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1)
    shape = _check_common(spacing, tumor_fraction, grid)
    require_train_extra()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder; pass a folder path")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": f"mrtranslate {__version__} phantom",
        "n": n,
        "seed": seed,
        "spacing_mm": float(spacing),
        "grid": list(shape),
        "tumor_fraction": float(tumor_fraction),
        "blur": bool(blur),
        "layout": "BraTS 2021",
        "cases": [case_name(seed, i) for i in range(n)],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    jobs = [(out, seed, i, float(spacing), float(tumor_fraction), shape, bool(blur)) for i in range(n)]

    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="phantom", unit="subject", disable=not progress)
    folders: list[Path] = []
    try:
        if workers == 1 or n == 1:
            for job in jobs:
                folders.append(_write_one(job))
                bar.update()
        else:
            # spawn: a fresh interpreter per worker, safe whatever threads the parent (torch, BLAS) started.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, n), mp_context=context, initializer=_init_worker) as pool:
                futures = {pool.submit(_write_one, job): job[2] for job in jobs}
                done: dict[int, Path] = {}
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update()
                folders = [done[i] for i in range(n)]
    finally:
        bar.close()
    logger.info("wrote %d phantom subjects to %s", n, out)
    return folders
