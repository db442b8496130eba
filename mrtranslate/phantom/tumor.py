"""Synthetic glioma: necrotic core, enhancing rim and surrounding oedema, with mass effect.

The tumour is defined in template (MNI) millimetres, so it deforms with the subject's anatomy: for an
output voxel whose template point is ``y``, the distance ``d = |y - c|`` to the centre ``c``, scaled by
a smooth random irregularity, decides the compartment. Mass effect pushes the surrounding tissue
outwards: the normal tissue shown at ``y`` is the template's tissue at
``c + (y - c) (1 - k exp(-d^2 / 2 R^2))``, a radial map that stays monotone for ``k < 1``.
Compartment edges are linear ramps one voxel wide (the partial volume of a flat edge across a voxel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .anatomy import BRAIN_HI_MM, BRAIN_LO_MM, SmoothFieldSampler, TemplateMaps

SEG_NECROSIS, SEG_OEDEMA, SEG_ENHANCING = 1, 2, 4  # BraTS 2021 labels
_SITE_WM_THRESHOLD = 0.7  # centres lie in deep white matter ...
_SITE_MIN_Z_MM = -15.0  # ... above the tentorium (supratentorial, where most adult gliomas arise)


@dataclass
class TumorDraw:
    """One tumour as drawn: centre (MNI mm), outer radius of the enhancing rim, and shape factors."""

    centre_mm: list[float]
    radius_mm: float  # outer edge of the enhancing rim
    core_fraction: float  # necrotic core radius / radius
    oedema_factor: float  # oedema outer radius / radius
    irregularity: float  # relative amplitude of the smooth radial perturbation
    mass_effect: float  # k of the radial push, in [0, 1)

    def as_dict(self) -> dict:
        return asdict(self)


def draw_tumor(rng: np.random.Generator, template: TemplateMaps) -> TumorDraw:
    """Random tumour: centre in deep supratentorial white matter, rim radius 8-25 mm, oedema 1.4-2.4x."""
    inverse = np.linalg.inv(template.affine)
    lo = np.asarray(BRAIN_LO_MM)
    hi = np.asarray(BRAIN_HI_MM)
    centre = (lo + hi) / 2
    for _ in range(2000):
        point = rng.uniform(lo, hi)
        ijk = np.round(inverse[:3, :3] @ point + inverse[:3, 3]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= template.wm.shape):
            continue
        if point[2] > _SITE_MIN_Z_MM and template.wm[tuple(ijk)] > _SITE_WM_THRESHOLD:
            centre = point
            break
    return TumorDraw(
        centre_mm=np.round(centre, 3).tolist(),
        radius_mm=round(float(rng.uniform(8.0, 25.0)), 3),
        core_fraction=round(float(rng.uniform(0.3, 0.65)), 4),
        oedema_factor=round(float(rng.uniform(1.4, 2.4)), 4),
        irregularity=round(float(rng.uniform(0.15, 0.4)), 4),
        mass_effect=round(float(rng.uniform(0.15, 0.45)), 4),
    )


def _ramp(signed_distance_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside an edge: 1 well inside (positive distance), 0 outside, linear over ``width_mm``."""
    out = signed_distance_mm / np.float32(width_mm)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass
class TumorFractions:
    """Fractions (before tissue weighting) of each output voxel inside the tumour's compartments."""

    core: np.ndarray  # necrotic core
    tumor: np.ndarray  # core plus enhancing rim
    oedema_zone: np.ndarray  # inside the oedema boundary but outside the tumour


def tumor_fractions(
    tumor: TumorDraw,
    coords_mm: list[np.ndarray],
    fields: SmoothFieldSampler,
    rng: np.random.Generator,
    voxel_mm: float,
) -> TumorFractions:
    """Compartment fractions at template points ``coords_mm``; applies the mass effect to them in place."""
    c = [np.float32(v) for v in tumor.centre_mm]
    d2 = (coords_mm[0] - c[0]) ** 2
    d2 += (coords_mm[1] - c[1]) ** 2
    d2 += (coords_mm[2] - c[2]) ** 2
    distance = np.sqrt(d2)
    radius = np.float32(tumor.radius_mm)
    # B-spline fields have ~0.35x the std of their nodes: nodes of std 1.4 give a field of std ~0.5.
    irregularity = np.float32(tumor.irregularity)
    shape_rim, shape_core, shape_oedema = (fields.sample(rng, 1.4) for _ in range(3))
    rim_radius = radius * (1 + irregularity * shape_rim)
    tumor_part = _ramp(rim_radius - distance, voxel_mm)
    core_radius = np.float32(tumor.core_fraction) * radius * (1 + irregularity * shape_core)
    core = np.minimum(_ramp(core_radius - distance, voxel_mm), tumor_part)  # the rim encloses the core
    oedema_radius = radius * np.float32(tumor.oedema_factor) * (1 + irregularity * shape_oedema)
    oedema_zone = np.clip(_ramp(oedema_radius - distance, voxel_mm) - tumor_part, 0.0, 1.0)
    # Mass effect: the tissue seen at y comes from nearer the centre.
    shrink = 1 - np.float32(tumor.mass_effect) * np.exp(-d2 / np.float32(2 * tumor.radius_mm**2))
    for k in range(3):
        coords_mm[k] -= c[k]
        coords_mm[k] *= shrink
        coords_mm[k] += c[k]
    return TumorFractions(core=core, tumor=tumor_part, oedema_zone=oedema_zone)


def compose_tissues(
    normal: dict[str, np.ndarray], fractions: TumorFractions | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions of every class and the BraTS label map (dominant class of each brain voxel).

    ``normal`` holds the sampled ``gm``, ``wm`` and ``brain`` maps. CSF = brain - GM - WM, clipped. The
    tumour replaces all tissue it covers; oedema replaces white matter, and grey matter at half the rate
    (vasogenic oedema spreads along white-matter tracts and spares most of the cortex).
    """
    brain, gm, wm = normal["brain"], normal["gm"], normal["wm"]
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    if fractions is None:
        tissues = {"wm": wm, "gm": gm, "csf": csf}
        return tissues, np.zeros(brain.shape, dtype=np.uint8)
    keep = 1 - fractions.tumor
    oedema_zone = fractions.oedema_zone
    tissues = {
        "wm": wm * keep * (1 - oedema_zone),
        "gm": gm * keep * (1 - 0.5 * oedema_zone),
        "csf": csf * keep,
        "oedema": keep * oedema_zone * (wm + 0.5 * gm),
        "necrosis": fractions.core * brain,
        "enhancing": (fractions.tumor - fractions.core) * brain,
    }
    seg = np.zeros(brain.shape, dtype=np.uint8)
    inside = np.nonzero((fractions.tumor > 0) | (oedema_zone > 0))  # label only where a tumour class exists
    normal_total = tissues["wm"][inside] + tissues["gm"][inside] + tissues["csf"][inside]
    stacked = np.stack([normal_total, *(tissues[k][inside] for k in ("necrosis", "oedema", "enhancing"))])
    labels = np.array([0, SEG_NECROSIS, SEG_OEDEMA, SEG_ENHANCING], dtype=np.uint8)
    seg[inside] = labels[np.argmax(stacked, axis=0)]
    return tissues, seg
