"""One PNG per task: axial, coronal and sagittal slices of source, target, and each method's prediction and error.

Layout: one row per view (axial, coronal, sagittal) through the centre of the target's brain bounding box,
in RAS orientation, neurological convention (the subject's right on the right), with the image's voxel
aspect; columns: source, target, then for each method its prediction and absolute error. Every image is normalised as the metrics normalise them (own 0.5th..99.5th
percentiles over the brain, [0, 1]); errors are |prediction - target| of the normalised images, shown on
[0, 0.5]. Needs matplotlib (``pip install "mrtranslate[eval]"``); drawn on a ``Figure`` with the Agg canvas,
so pyplot's global state and the user's backend are left alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import MissingDependencyError, OutputWriteError
from .metrics import normalize

MODALITY_LABELS: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

PANEL_INCHES = 1.9
DPI = 100
ERROR_MAX = 0.5
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

__all__ = ["FigureData", "require_matplotlib", "write_figure"]


def require_matplotlib() -> None:
    """Raise ``MissingDependencyError`` when matplotlib is missing (before any long work starts)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            'figures need matplotlib: pip install "mrtranslate[eval]" (or pass --no-figures / figures=False)'
        ) from None


@dataclass
class FigureData:
    """What one task's figure shows: raw arrays on one grid, its affine, and each method's prediction."""

    source_name: str
    target_name: str
    case: str
    source: np.ndarray
    target: np.ndarray
    affine: np.ndarray
    predictions: dict[str, np.ndarray]


def _ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, ornt)


def _ras_zooms(affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = zooms
    return out


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """2D images (rows top to bottom) of the three views of a RAS volume through ``centre``."""
    i, j, k = centre
    return {
        "axial": volume[:, :, k].T[::-1],  # rows: anterior (top) to posterior; subject's right on the right
        "coronal": volume[:, j, :].T[::-1],  # rows: superior to inferior
        "sagittal": volume[i, :, :].T[::-1],  # columns: posterior to anterior
    }


def _aspects(zooms: np.ndarray) -> dict[str, float]:
    """imshow aspect (row height / column width in data units) of each view."""
    return {"axial": zooms[1] / zooms[0], "coronal": zooms[2] / zooms[0], "sagittal": zooms[2] / zooms[1]}


def write_figure(data: FigureData, methods: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Draw ``data`` (``methods``: key -> column label, in column order) to ``path`` atomically.

    Returns ``{"path", "case", "size": [width, height], "panels": [{"view", "column", "box"}]}`` where each box
    is ``[x0, y0, x1, y1]`` in pixels of the PNG (origin top left): where each panel's axes lie.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    source_label = MODALITY_LABELS.get(data.source_name, data.source_name)
    target_label = MODALITY_LABELS.get(data.target_name, data.target_name)
    brain = data.target > 0
    ras = {"source": _ras(normalize(data.source, data.source > 0), data.affine)}
    ras["target"] = _ras(normalize(data.target, brain), data.affine)
    columns: list[tuple[str, str, np.ndarray, str, tuple[float, float]]] = [
        ("source", source_label, ras["source"], "gray", (0.0, 1.0)),
        ("target", target_label, ras["target"], "gray", (0.0, 1.0)),
    ]
    for key, label in methods.items():
        pred = _ras(normalize(data.predictions[key], brain), data.affine)
        columns.append((key, label, pred, "gray", (0.0, 1.0)))
        columns.append((f"{key} |error|", f"|error| {label}", np.abs(pred - ras["target"]), "magma", (0.0, ERROR_MAX)))
    ras_brain = _ras(brain, data.affine)
    lo = np.argwhere(ras_brain).min(axis=0)
    hi = np.argwhere(ras_brain).max(axis=0)
    centre = tuple(int(c) for c in (lo + hi) // 2)
    aspects = _aspects(_ras_zooms(data.affine))

    n_rows, n_cols = len(VIEWS), len(columns)
    fig = Figure(figsize=(PANEL_INCHES * n_cols, PANEL_INCHES * n_rows + 0.5), dpi=DPI, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / (PANEL_INCHES * n_rows + 0.5),
                        wspace=0.04, hspace=0.04)
    fig.suptitle(f"{source_label} → {target_label}, {data.case}", color="white", fontsize=10)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for c, (_, label, volume, cmap, (vmin, vmax)) in enumerate(columns):
        views = _slices(volume, centre)
        for r, view in enumerate(VIEWS):
            ax = axes[r, c]
            ax.imshow(views[view], cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspects[view], interpolation="nearest")
            ax.set_axis_off()
            ax.set_facecolor("black")
            if r == 0:
                ax.set_title(label, color="white", fontsize=7)
            if c == 0:
                ax.text(-0.02, 0.5, view, color="white", fontsize=7, rotation=90, ha="right", va="center",
                        transform=ax.transAxes)
    canvas.draw()
    width, height = (int(round(v)) for v in canvas.get_width_height())
    panels = []
    for c, (key, _, _, _, _) in enumerate(columns):
        for r, view in enumerate(VIEWS):
            bb = axes[r, c].get_window_extent()
            box = [int(np.ceil(bb.x0)), int(np.ceil(height - bb.y1)), int(np.floor(bb.x1)), int(np.floor(height - bb.y0))]
            panels.append({"view": view, "column": key, "box": box})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        fig.savefig(str(tmp), dpi=DPI, facecolor="black", format="png")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputWriteError(f"could not write {path} ({exc}): check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "case": data.case, "size": [width, height], "panels": panels}
