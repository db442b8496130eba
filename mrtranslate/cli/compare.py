"""`mrtranslate compare`: PSNR, NMSE, MAE and SSIM of one synthesised image against its target."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer

from ..errors import GridMismatchError, InputImageError
from .app import app

AFFINE_ATOL = 1e-4


def _load(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    """The 3D float64 voxel array and the 4x4 affine of a NIfTI file."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not path.is_file():
        raise InputImageError(f"{role} {path} does not exist; pass the path of a NIfTI file.")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float64))
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputImageError(f"cannot read {role} {path} as a NIfTI image ({exc}); check the file.") from exc
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) as some tools write 3D images
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(f"{role} {path} has shape {data.shape}; compare needs 3D volumes.")
    return data, np.asarray(image.affine, dtype=np.float64)


def _affine_text(affine: np.ndarray) -> str:
    rows = ("[" + " ".join(f"{v:.6g}" for v in row) + "]" for row in affine[:3])
    return "[" + " ".join(rows) + "]"


def _check_same_grid(
    a: tuple[Path, np.ndarray, np.ndarray], b: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    (path_a, data_a, affine_a), (path_b, data_b, affine_b) = a, b
    if data_a.shape != data_b.shape:
        raise GridMismatchError(
            f"{path_a} has shape {data_a.shape} but {path_b} has shape {data_b.shape}; "
            "resample one onto the other's grid before comparing."
        )
    if not np.allclose(affine_a, affine_b, atol=AFFINE_ATOL):
        raise GridMismatchError(
            f"{path_a} and {path_b} have different affines: {_affine_text(affine_a)} vs "
            f"{_affine_text(affine_b)}; resample one onto the other's grid before comparing."
        )


def _cell(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


@app.command(
    "compare",
    help=(
        "Print PSNR, NMSE, MAE and SSIM of PRED against TARGET, in the brain mask and the whole volume (and, with "
        "--labels, in the tumour and the healthy brain, as the BraTS synthesis challenge scores them).\n\n"
        "Both images are normalised the same way first: clipped to their own 0.5th and 99.5th percentiles "
        "over the brain-mask voxels and rescaled to [0, 1] (BraTS synthesis convention). SSIM is 3D with a "
        "Gaussian window (sigma 1.5). The images (and mask) must share shape and affine. "
        "With --json, a PSNR of identical images is written as the string \"inf\"."
    ),
)
def compare(
    pred: Path = typer.Argument(..., metavar="PRED", help="Synthesised image (NIfTI)."),
    target: Path = typer.Argument(..., metavar="TARGET", help="Reference image (NIfTI) on the same grid."),
    mask: Path | None = typer.Option(
        None,
        "--mask",
        metavar="MASK",
        help="Brain mask (NIfTI, voxels > 0) on the same grid. Default: target voxels > 0.",
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        metavar="LABELS",
        help="Tumour label map (NIfTI, e.g. BraTS <case>_seg) on the same grid: also score the tumour (labels > 0) "
        "and the healthy brain (brain and not tumour).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    from ..evaluation.metrics import LABEL_REGIONS, METRICS, REGIONS, compute_metrics, foreground_mask, jsonable

    pred_data, pred_affine = _load(pred, "prediction")
    target_data, target_affine = _load(target, "target")
    _check_same_grid((pred, pred_data, pred_affine), (target, target_data, target_affine))
    mask_data = None
    if mask is not None:
        mask_data, mask_affine = _load(mask, "mask")
        _check_same_grid((mask, mask_data, mask_affine), (target, target_data, target_affine))
    label_data = None
    if labels is not None:
        label_data, label_affine = _load(labels, "label map")
        _check_same_grid((labels, label_data, label_affine), (target, target_data, target_affine))
    metrics = compute_metrics(pred_data, target_data, mask_data, label_data)
    regions = REGIONS + (LABEL_REGIONS if labels is not None else ())

    if as_json:
        typer.echo(json.dumps(jsonable(metrics), allow_nan=False))
        return
    brain = foreground_mask(target_data) if mask_data is None else mask_data > 0
    source = "target > 0" if mask is None else str(mask)
    names = {"psnr": "PSNR (dB)", "nmse": "NMSE", "mae": "MAE", "ssim": "SSIM"}
    typer.echo(f"brain mask: {source} ({int(brain.sum())} voxels)")
    if label_data is not None:
        typer.echo(f"tumour: {labels} > 0 ({int((label_data > 0).sum())} voxels); healthy: brain and not tumour")
    typer.echo(f"{'metric':<10}" + "".join(f"{region:>12}" for region in regions))
    for name in METRICS:
        typer.echo(f"{names[name]:<10}" + "".join(f"{_cell(metrics[name][r]):>12}" for r in regions))
