"""A small example subject shipped with the package, so that the main job runs without a clone or a download.

>>> from mrtranslate import examples
>>> examples.path("t1")          # the example T1 scan (a NIfTI file inside the installed package)

The subject is **synthetic**: a phantom made by mrtranslate's simulator (``mrtranslate phantom``, seed 0,
with a tumour) at the bundled default model's voxel spacing and grid (2 mm, 80 x 96 x 80, RAS), all four
contrasts of one subject on one grid, skull-stripped, stored as int16 (the 99.5th brain percentile is about
1000). It is the repository's ``examples/data/Phantom_0_00000`` subject; no patient data. Its anatomy comes
from the ICBM 2009a template (see ``README.md`` beside this file for the copyright notice).

Translating its T1 shows what the default model does end to end; its own T2, T1ce and FLAIR are there to
compare against (``mrtranslate compare``). A phantom's contrast is simulated, not acquired: on real scans
expect the quality the model card reports for real data.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..modalities import MODALITIES, canonical

_FOLDER = Path(__file__).resolve().parent
SUBJECT = "phantom"


def path(modality: str = "t1") -> Path:
    """The example scan of ``modality`` (``t1``, ``t1ce``, ``t2``, ``flair`` or an alias)."""
    name = canonical(modality)
    file = _FOLDER / f"{SUBJECT}_{name}.nii.gz"
    if not file.is_file():  # a broken install
        raise UsageError(f"the example {name} scan is missing from the installed package ({file}): reinstall mrtranslate")
    return file


def paths() -> dict[str, Path]:
    """Every example scan, by modality."""
    return {m: path(m) for m in MODALITIES}


__all__ = ["path", "paths", "SUBJECT"]
