"""Is this a skull-stripped brain? A cheap check before translating a head the model cannot make sense of.

ALDM models are trained on skull-stripped brains with background 0; on a head with skull, scalp and a noisy
background they produce nonsense. Two signs of a head that was not skull-stripped, either one enough:

1. *The background is not 0*: on most of the image's six faces more than half of the voxels are > 0. A
   skull-stripped brain touches a face at most where the field of view cuts it (thin slabs touch two faces),
   while the air around an unstripped head holds noise > 0 everywhere.
2. *The foreground is larger than a brain*: the volume of the voxels brighter than a tenth of the image's
   99th percentile exceeds 2.2 litres. Intracranial volumes of adults lie below about 2 litres (brain
   masks of the BraTS cases: 1.2 to 1.6 litres); a head with skull and scalp holds about 3 litres and more,
   even when its background was set to 0.

Small or partial brains (phantoms, slabs) pass. The check looks only at the input array: no registration,
no atlas; a fraction of a second for a 1 mm volume.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputImageError, option

#: More than this fraction of a face's voxels > 0 counts as a face in the background.
FACE_FILLED = 0.5
#: Foreground volumes above this (litres) are larger than any brain.
MAX_BRAIN_LITRES = 2.2
#: Voxels brighter than this fraction of the 99th percentile of the voxels > 0 are foreground (sign 2).
BRIGHT_FRACTION = 0.1


class NotSkullStrippedError(InputImageError):
    """An input that looks like a whole head (skull, scalp, background noise), not a skull-stripped brain."""


def skull_signs(data: np.ndarray, voxel_volume_mm3: float) -> list[str]:
    """The signs (in words) that ``data`` is a head that was not skull-stripped; empty when none."""
    signs = []
    positive = data > 0
    faces = [positive[0], positive[-1], positive[:, 0], positive[:, -1], positive[:, :, 0], positive[:, :, -1]]
    filled = sorted(float(f.mean()) for f in faces)
    if filled[2] > FACE_FILLED:  # at least four of the six faces are mostly > 0
        signs.append(f"its background is not 0 ({100 * float(positive.mean()):.0f}% of the voxels are > 0)")
    values = data[positive]
    if values.size:
        bright = int((data > BRIGHT_FRACTION * float(np.percentile(values, 99))).sum())
        litres = bright * voxel_volume_mm3 / 1e6
        if litres > MAX_BRAIN_LITRES:
            signs.append(f"its foreground is {litres:.1f} litres, more than a brain")
    return signs


def check_skull_stripped(vol: object) -> None:
    """Raise :class:`NotSkullStrippedError` when the Volume ``vol`` looks like a head that was not skull-stripped."""
    spacing = np.asarray(vol.spacing, dtype=float)  # type: ignore[attr-defined]
    signs = skull_signs(np.asarray(vol.data), float(np.prod(spacing)))  # type: ignore[attr-defined]
    if signs:
        raise NotSkullStrippedError(
            f"{vol.label} does not look skull-stripped ({'; '.join(signs)}): the model works on brains only; "  # type: ignore[attr-defined]
            f"pass {option('skull_strip', True)} to extract the brain with HD-BET first "
            "(pip install \"mrtranslate[preprocess]\"), skull-strip it yourself (e.g. with SynthStrip), "
            f"or pass {option('allow_skull', True)} to translate it anyway"
        )
