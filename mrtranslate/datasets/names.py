"""Output names of dataset runs, in the input's own convention.

* BIDS: ``derivatives/mrtranslate/sub-XX[/ses-YY]/anat/`` with the source's entities, the target's suffix
  (``T1w``, ``T2w``, ``FLAIR``; ``ce-gadolinium`` for T1ce) and ``desc-synth`` marking the image as
  synthetic, e.g. ``sub-01_ses-1_run-1_desc-synth_FLAIR.nii.gz``; the derivative dataset gets a
  ``dataset_description.json`` with ``GeneratedBy``.
* BraTS: the subject's folder and the BraTS ending of the target in the subject's own style (2018-2021
  ``_flair``, 2023 ``-t2f``, BraTS toolkit ``_fla_bet``), then ``synth`` (``<case>_flair_synth.nii.gz``,
  ``<case>-t2f-synth.nii.gz``): a synthetic image is never named like an acquired one.
* A flat folder: ``<input stem>_<target>.nii.gz``, as for single files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import __version__

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mgz", ".mgh")
SYNTHETIC_DESC = "synth"

_BRATS_STYLES: dict[str, dict[str, str]] = {
    "2021": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
    "toolkit": {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "fla"},
}
_BIDS_SUFFIX = {"t1": "T1w", "t1ce": "T1w", "t2": "T2w", "flair": "FLAIR"}
# BIDS entity order (anatomical data, then desc last as in derivatives).
_BIDS_ORDER = ("sub", "ses", "task", "acq", "ce", "trc", "rec", "run", "echo", "flip", "inv", "mt", "part", "chunk")


def split_suffix(name: str) -> tuple[str, str]:
    """``("sub-01_T1w", ".nii.gz")`` for ``sub-01_T1w.nii.gz``; the extension is ``""`` when not an image."""
    lower = name.lower()
    for ext in IMAGE_SUFFIXES:
        if lower.endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    return name, ""


def flat_name(source: Path, target: str) -> str:
    """``<input stem>_<target>.nii.gz``."""
    return f"{split_suffix(source.name)[0]}_{target}.nii.gz"


def brats_name(case: str, source: Path, target: str) -> str:
    """The file name of the synthetic ``target`` in the BraTS style of ``source`` (a file of subject ``case``),
    marked ``synth`` after the contrast (``<case>_flair_synth``, ``<case>-t2f-synth``) so that it is never
    taken for an acquired scan: BraTS tools and mrtranslate's own dataset reader do not read it as one."""
    stem, _ = split_suffix(source.name)
    rest = stem[len(case):] if stem.lower().startswith(case.lower()) else ""
    m = re.fullmatch(r"([_-])([A-Za-z0-9]+)(.*)", rest)
    if m is None:
        return f"{case}_{target}_{SYNTHETIC_DESC}.nii.gz"
    sep, token, trailing = m.group(1), m.group(2).lower(), m.group(3)
    if sep == "-" and token in _BRATS_STYLES["2023"].values():
        style = "2023"
    elif trailing or token in ("t1c", "fla"):
        style = "toolkit"
    else:
        style = "2021"
    return f"{case}{sep}{_BRATS_STYLES[style][target]}{trailing}{sep}{SYNTHETIC_DESC}.nii.gz"


def bids_entities(name: str) -> tuple[list[tuple[str, str]], str]:
    """The key-value entities and the suffix of a BIDS file name."""
    stem, _ = split_suffix(name)
    parts = stem.split("_")
    entities = [tuple(p.split("-", 1)) for p in parts[:-1] if "-" in p]
    return [(k, v) for k, v in entities], parts[-1]


def bids_name(source: Path, target: str) -> str:
    """The BIDS name of the synthetic ``target`` made from ``source``: its entities without ``ce`` and
    ``desc`` (``ce-gadolinium`` for a T1ce target), ``desc-synth`` and the target's suffix."""
    entities, _ = bids_entities(source.name)
    kept = [(k, v) for k, v in entities if k not in ("ce", "desc")]
    if target == "t1ce":
        kept.append(("ce", "gadolinium"))
    rank = {k: i for i, k in enumerate(_BIDS_ORDER)}
    kept.sort(key=lambda kv: rank.get(kv[0], len(rank)))  # stable: unknown entities keep their order
    kept.append(("desc", SYNTHETIC_DESC))
    return "_".join(f"{k}-{v}" for k, v in kept) + f"_{_BIDS_SUFFIX[target]}.nii.gz"


def bids_uri(dataset_root: Path, path: Path) -> str:
    """``bids:raw:<path relative to the raw dataset>``, the BIDS URI that the derivative's
    ``DatasetLinks`` resolves."""
    return "bids:raw:" + Path(os.path.relpath(path, dataset_root)).as_posix()


def derivative_description(raw_root: Path, out_root: Path, model: str, revision: str | None) -> dict[str, Any]:
    """``dataset_description.json`` of the derivative dataset that holds the synthetic images."""
    generated: dict[str, Any] = {
        "Name": "mrtranslate",
        "Version": __version__,
        "Description": "Synthetic MRI contrasts translated with ALDM (adaptive latent diffusion), "
                       f"model {model}" + (f" at revision {revision}" if revision else ""),
        "CodeURL": "https://pypi.org/project/mrtranslate/",
    }
    return {
        "Name": "mrtranslate synthetic contrasts",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": Path(os.path.relpath(raw_root, out_root)).as_posix()},
    }
