"""Anatomy of the phantom: the ICBM 2009a template, the output grid, and random smooth spatial transforms.

The tissue maps are the ICBM 2009a nonlinear symmetric T1 template and its grey/white-matter probability
maps that ``nilearn`` ships as package data (Fonov et al., NeuroImage 2011; nilearn's "converted" copies,
skull-stripped, 1 mm, uint8). They are read with nibabel from nilearn's package folder and rescaled to
[0, 1] exactly as ``nilearn.datasets.load_mni152_{template,gm_template,wm_template,brain_mask}`` do;
importing ``nilearn.datasets`` itself costs ~1.5 s in every worker process and is not needed.

Coordinates: every map lives in MNI world millimetres (RAS). A subject's output voxel ``x`` maps to the
template point ``y = c0 + M (x - c0) + t + u(x)`` (random affine about the brain centre ``c0`` plus a smooth
B-spline displacement ``u``); the maps are sampled there with trilinear interpolation.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, UsageError

TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Brain box of the template mask (T1 > 0.2, as nilearn's load_mni152_brain_mask), voxel centres in MNI mm;
# tests/test_phantom.py checks these against the files.
BRAIN_LO_MM: tuple[float, float, float] = (-72.0, -107.0, -72.0)
BRAIN_HI_MM: tuple[float, float, float] = (72.0, 73.0, 82.0)
BRAIN_CENTRE_MM: tuple[float, float, float] = tuple((lo + hi) / 2 for lo, hi in zip(BRAIN_LO_MM, BRAIN_HI_MM))
GRID_MULTIPLE = 16  # every side of the default grid is a multiple of this (the model's downsampling)
GRID_MARGIN_MM = 2.0  # background kept on each side of the template brain box
MASK_THRESHOLD = 0.2  # nilearn's load_mni152_brain_mask default
_INSTALL_HINT = 'the phantom simulator needs nilearn and scipy: pip install "mrtranslate[train]"'


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def require_train_extra() -> None:
    """Raise ``MissingDependencyError`` (one line, with the pip command) if nilearn or scipy is missing."""
    missing = [name for name in ("nilearn", "scipy") if not _module_available(name)]
    if missing:
        raise MissingDependencyError(f"{' and '.join(missing)} not installed; {_INSTALL_HINT}")


def template_dir() -> Path:
    """nilearn's folder of bundled template files (located without importing nilearn)."""
    require_train_extra()
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"nilearn not installed; {_INSTALL_HINT}")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise MissingDependencyError(
            f"nilearn at {folder} lacks its bundled ICBM 2009a template ({missing[0]}); "
            'reinstall it: pip install --force-reinstall "mrtranslate[train]"'
        )
    return folder


def default_grid(spacing: float) -> tuple[int, int, int]:
    """Grid shape at ``spacing`` mm: the template brain box plus margins, each side a multiple of 16.

    2 mm -> (80, 96, 80); 1 mm -> (160, 192, 160) (144 is too small: the brain spans 145 mm R-L, 155 mm I-S).
    """
    if not spacing > 0:
        raise UsageError(f"spacing must be a positive number of millimetres, got {spacing}")
    shape = []
    for lo, hi in zip(BRAIN_LO_MM, BRAIN_HI_MM):
        extent_mm = hi - lo + 1.0 + 2 * GRID_MARGIN_MM
        shape.append(int(math.ceil(extent_mm / spacing / GRID_MULTIPLE - 1e-9)) * GRID_MULTIPLE)
    return (shape[0], shape[1], shape[2])


def grid_affine(spacing: float, grid: tuple[int, int, int]) -> np.ndarray:
    """RAS voxel-to-MNI-mm affine of an isotropic grid centred on the template brain (origin rounded to 1 mm)."""
    affine = np.eye(4)
    affine[:3, :3] *= spacing
    centre = np.asarray(BRAIN_CENTRE_MM)
    affine[:3, 3] = np.round(centre - spacing * (np.asarray(grid, dtype=float) - 1) / 2)
    return affine


MAP_NAMES: tuple[str, ...] = ("gm", "wm", "brain")


@dataclass(frozen=True)
class TemplateMaps:
    """Template GM, WM and brain maps in [0, 1], smoothed for one output spacing, and their voxel-to-mm affine.

    ``maps`` stacks them (in ``MAP_NAMES`` order) so that one interpolation pass samples all three. Cached
    and shared: treat as read-only (left writable because torch.from_numpy warns on read-only arrays).
    """

    maps: np.ndarray
    affine: np.ndarray

    @property
    def gm(self) -> np.ndarray:
        return self.maps[0]

    @property
    def wm(self) -> np.ndarray:
        return self.maps[1]

    @property
    def brain(self) -> np.ndarray:
        return self.maps[2]


@lru_cache(maxsize=2)
def load_template(spacing: float) -> TemplateMaps:
    """The template's GM, WM and brain maps, pre-smoothed so that sampling them at ``spacing`` does not alias.

    A Gaussian of FWHM sqrt(spacing^2 - 1) mm brings the 1 mm maps to the resolution of the output voxels.
    Cached per spacing (one load per process, ~1 s).
    """
    import nibabel as nib
    from scipy import ndimage

    folder = template_dir()
    images = {key: nib.load(folder / name) for key, name in TEMPLATE_FILES.items()}
    affine = images["t1"].affine.copy()
    arrays = {}
    for key, image in images.items():
        data = np.asarray(image.dataobj, dtype=np.float32)
        arrays[key] = data / data.max()
    arrays["brain"] = (arrays["t1"] > MASK_THRESHOLD).astype(np.float32)
    maps = np.stack([arrays[key] for key in MAP_NAMES])
    sigma = math.sqrt(max(spacing**2 - 1.0, 0.0)) / (2 * math.sqrt(2 * math.log(2)))
    if sigma > 0.05:
        maps = ndimage.gaussian_filter(maps, (0, sigma, sigma, sigma), output=np.float32, mode="constant")
    return TemplateMaps(maps=maps, affine=affine)


def bspline_matrix(positions_mm: np.ndarray, start_mm: float, step_mm: float, n_nodes: int) -> np.ndarray:
    """Cubic B-spline weights (len(positions), n_nodes) of nodes at ``start + k * step`` for each position."""
    u = (positions_mm[:, None] - (start_mm + step_mm * np.arange(n_nodes))[None, :]) / step_mm
    a = np.abs(u)
    weights = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return weights.astype(np.float32)


class SmoothFieldSampler:
    """Random smooth fields on one output grid: cubic B-splines whose control nodes are fixed in MNI mm.

    Nodes sit on a lattice anchored in world space (not on the grid), so one subject gets the same field at
    any spacing; far outside the brain the field fades to zero. Evaluation is separable: three small matrix products, ~40 ms for a 1 mm grid.
    """

    def __init__(self, affine: np.ndarray, grid: tuple[int, int, int], node_spacing_mm: float) -> None:
        self.grid = grid
        self.node_shape: list[int] = []
        self.matrices: list[np.ndarray] = []
        for axis in range(3):
            positions = affine[axis, 3] + affine[axis, axis] * np.arange(grid[axis])
            # A fixed lattice (brain box + 60 mm), so that the random draws do not depend on the grid.
            lo = math.floor((BRAIN_LO_MM[axis] - 60.0) / node_spacing_mm)
            hi = math.ceil((BRAIN_HI_MM[axis] + 60.0) / node_spacing_mm)
            self.node_shape.append(hi - lo + 1)
            self.matrices.append(bspline_matrix(positions, lo * node_spacing_mm, node_spacing_mm, hi - lo + 1))

    def sample(self, rng: np.random.Generator, std: float) -> np.ndarray:
        """One field on the grid whose control values are N(0, std^2); float32."""
        nodes = rng.standard_normal(tuple(self.node_shape), dtype=np.float32) * np.float32(std)
        return self.evaluate(nodes)

    def evaluate(self, nodes: np.ndarray) -> np.ndarray:
        wx, wy, wz = self.matrices
        field = np.tensordot(wx, nodes, axes=(1, 0))
        field = np.tensordot(field, wy, axes=(1, 1))
        field = np.tensordot(field, wz, axes=(1, 1))
        return np.ascontiguousarray(field, dtype=np.float32)


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (RAS axes)."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SpatialDraw:
    """A subject's random spatial transform (all in MNI mm), as drawn."""

    rotation_deg: list[float]
    scale: list[float]
    translation_mm: list[float]
    deformation_mm: float  # std of the B-spline nodes' displacements; the field's own std is ~0.35x this

    def matrix(self) -> np.ndarray:
        return rotation_matrix(np.deg2rad(self.rotation_deg)) @ np.diag(self.scale)


def draw_spatial(rng: np.random.Generator) -> SpatialDraw:
    """A small random affine and a deformation strength.

    The output-to-template scale is drawn above 1 on average because the ICBM template brain is larger than
    a typical adult brain; subject brains thus range from ~3% larger to ~10% smaller than the template.
    """
    iso = rng.uniform(0.97, 1.10)
    return SpatialDraw(
        rotation_deg=rng.uniform(-6.0, 6.0, size=3).round(4).tolist(),
        scale=(iso * np.exp(rng.normal(0.0, 0.02, size=3))).round(5).tolist(),
        translation_mm=rng.uniform(-3.0, 3.0, size=3).round(4).tolist(),
        deformation_mm=float(round(rng.uniform(4.0, 8.0), 4)),
    )


def template_coordinates(
    spatial: SpatialDraw, displacement_mm: list[np.ndarray], affine: np.ndarray, grid: tuple[int, int, int]
) -> list[np.ndarray]:
    """MNI mm coordinates (three arrays of the grid's shape) that each output voxel takes its tissue from."""
    centre = np.asarray(BRAIN_CENTRE_MM)
    matrix = spatial.matrix()
    # y = c0 + M (A_vox x + a0 - c0) + t + u(x), written as per-axis broadcasts of 1D index ramps.
    linear = matrix @ affine[:3, :3]
    offset = centre + matrix @ (affine[:3, 3] - centre) + np.asarray(spatial.translation_mm)
    ramps = [np.arange(n, dtype=np.float32) for n in grid]
    coords = []
    for k in range(3):
        y = displacement_mm[k] + np.float32(offset[k])
        y += np.float32(linear[k, 0]) * ramps[0][:, None, None]
        y += np.float32(linear[k, 1]) * ramps[1][None, :, None]
        y += np.float32(linear[k, 2]) * ramps[2][None, None, :]
        coords.append(y)
    return coords


def sample_maps(template: TemplateMaps, coords_mm: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Trilinear samples of the template GM, WM and brain maps at MNI points (zero outside the template).

    One ``torch.nn.functional.grid_sample`` pass samples the three maps (~5x faster than three
    ``scipy.ndimage.map_coordinates`` calls at 1 mm); each output value depends on its point only, so the
    result does not depend on the thread count.
    """
    import torch

    inverse = np.linalg.inv(template.affine)
    sizes = template.maps.shape[1:]
    # grid_sample wants (x, y, z) = (last, middle, first) array axis, normalised to [-1, 1] (align_corners).
    grid = np.empty((*coords_mm[0].shape, 3), dtype=np.float32)
    for axis in range(3):
        scale = 2.0 / (sizes[axis] - 1)
        channel = grid[..., 2 - axis]
        channel[...] = np.float32(inverse[axis, 3] * scale - 1.0)
        for j in range(3):
            if inverse[axis, j] != 0:
                channel += np.float32(inverse[axis, j] * scale) * coords_mm[j]
    with torch.inference_mode():
        sampled = torch.nn.functional.grid_sample(
            torch.from_numpy(np.ascontiguousarray(template.maps))[None],
            torch.from_numpy(grid)[None],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )[0].numpy()
    return {key: np.clip(sampled[i], 0.0, 1.0) for i, key in enumerate(MAP_NAMES)}
