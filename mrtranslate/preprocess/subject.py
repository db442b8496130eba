"""One subject's scans as acquired -> brain-extracted scans on one reference grid, ready to translate.

In this order (``mrtranslate complete SUBJECT --preprocess``, :func:`prepare_subject`):

1. the reference contrast: T1ce if the subject has it, else T1 (as the BraTS toolkit does), else T2, FLAIR;
2. every other scan is rigidly registered to the reference (:mod:`.register`) and resampled onto its grid
   (linear); each transform is written as ``<case>_<contrast>_to_<reference>.tfm``;
3. the brain is extracted once, on the reference (:mod:`.brain`), written as ``<case>_brainmask.nii.gz``,
   and applied to every registered scan (0 outside the brain).

Translations made from these scans are on the reference grid: they overlay the reference scan.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..imaging.volume import Volume, load_volume, save_image
from .brain import BrainMask, extract_brain
from .register import register_rigid, resample_onto, save_transform

logger = logging.getLogger(__name__)

REFERENCE_ORDER = ("t1ce", "t1", "t2", "flair")


@dataclass
class PreparedSubject:
    """A subject's scans on the reference grid, brain only, and what was written on the way."""

    case: str
    reference: str
    volumes: dict[str, Volume]
    mask: BrainMask
    mask_path: Path | None = None
    transforms: dict[str, Path] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What a run record says about the preprocessing."""
        return {"preprocess": {"reference": self.reference, "registration": "rigid (SimpleITK, Mattes MI)",
                               "brain_mask": self.mask_path.name if self.mask_path else None,
                               "transforms": {m: p.name for m, p in self.transforms.items()},
                               **self.mask.record}}


def reference_of(modalities: Any) -> str:
    """The reference contrast among ``modalities``: the first of :data:`REFERENCE_ORDER` present."""
    return next(m for m in REFERENCE_ORDER if m in modalities)


def prepare_subject(files: Mapping[str, Path | Volume], case: str, out_folder: Path | None, *,
                    device: Any = None, overwrite: bool = False) -> PreparedSubject:
    """Register, brain-extract and mask a subject's scans (``files``: canonical modality -> path or Volume).

    Writes the brain mask and the transforms into ``out_folder`` (None: nothing written).
    """
    vols = {m: load_volume(f) for m, f in files.items()}
    ref = reference_of(vols)
    fixed = vols[ref]
    on_ref: dict[str, Volume] = {ref: fixed}
    transforms: dict[str, Path] = {}
    for m, vol in vols.items():
        if m == ref:
            continue
        tfm = register_rigid(fixed, vol)
        on_ref[m] = resample_onto(vol, fixed, tfm)
        if out_folder is not None:
            transforms[m] = save_transform(tfm, out_folder / f"{case}_{m}_to_{ref}.tfm")
    mask = extract_brain(fixed, device=device)
    mask_path = None
    if out_folder is not None:
        mask_path = save_image(mask.to_image(fixed.header), out_folder / f"{case}_brainmask.nii.gz", overwrite=True)
    masked = {m: mask.apply(v) for m, v in on_ref.items()}
    return PreparedSubject(case, ref, masked, mask, mask_path, transforms)
