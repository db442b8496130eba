"""Canonical modality names, their class ids, and the aliases users type.

The class id of a modality is its index in ``MODALITIES``: the published ALDM uses it to pick the
switchable SPADE layer and as the UNet's label. BraTS 2023 and BIDS names map onto the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .errors import ModalityError

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

_ALIASES: dict[str, str] = {
    # canonical (BraTS 2021)
    "t1": "t1",
    "t1ce": "t1ce",
    "t2": "t2",
    "flair": "flair",
    # BraTS 2023
    "t1n": "t1",
    "t1c": "t1ce",
    "t2w": "t2",
    "t2f": "flair",
    # BIDS and common spellings
    "t1w": "t1",
    "t1-weighted": "t1",
    "t1gd": "t1ce",
    "t1-gd": "t1ce",
    "t1ce-w": "t1ce",
    "ce-gadolinium_t1w": "t1ce",
    "ce-gd_t1w": "t1ce",
    "t1post": "t1ce",
    "t1-post": "t1ce",
    "t2-weighted": "t2",
    "t2flair": "flair",
    "t2-flair": "flair",
    # the BraTS toolkit's brain-extracted outputs (<id>_fla_bet.nii.gz)
    "fla": "flair",
}


def canonical(name: str) -> str:
    """Return the canonical name (t1, t1ce, t2, flair) of a modality name or alias, case-insensitive."""
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(MODALITIES)
    raise ModalityError(
        f"unknown modality {name!r}: use one of {known} "
        "(aliases: t1n/t1c/t2w/t2f of BraTS 2023, T1w/T1c/T2w/FLAIR of BIDS)"
    )


def class_id(name: str, modalities: Sequence[str] = MODALITIES) -> int:
    """Class id of a modality for a model whose modality list is ``modalities``."""
    canon = canonical(name)
    if canon not in modalities:
        raise ModalityError(
            f"modality {canon!r} is not one this model translates: it knows {', '.join(modalities)}"
        )
    return list(modalities).index(canon)


def canonical_list(names: Iterable[str]) -> list[str]:
    """Canonical names of ``names``, duplicates removed, order kept."""
    out: list[str] = []
    for n in names:
        c = canonical(n)
        if c not in out:
            out.append(c)
    return out


def pair_indices(key: str, modalities: Sequence[str] = MODALITIES) -> tuple[int, int] | None:
    """``(source, target)`` indices of ``"source->target"`` (aliases accepted); None unless it names two different
    modalities of ``modalities``."""
    try:
        src, tgt = [list(modalities).index(canonical(m)) for m in str(key).split("->")]
    except (ModalityError, ValueError):  # not two names, an unknown name, or one the model lacks
        return None
    return None if src == tgt else (src, tgt)


_TOKEN_SPLIT = re.compile(r"[^a-z0-9-]+")


def guess_from_filename(filename: str) -> str | None:
    """The modality a file name names unambiguously (e.g. ``sub-01_T1w.nii.gz``, ``BraTS_001_t2f``), else None.

    Tokens are split on ``_``, ``.`` and path separators; BIDS ``ce-gadolinium`` entities mark T1ce; the last
    part of a name of three or more hyphenated parts counts too (BraTS 2023: ``BraTS-GLI-00000-000-t1n``).
    """
    base = str(filename).replace("\\", "/").rsplit("/", 1)[-1].lower()
    for ext in (".nii.gz", ".nii", ".mgz", ".gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    if re.search(r"(^|_)ce-[a-z0-9]+(_|$)", base) and re.search(r"(^|_)t1w($|_)", base):
        return "t1ce"
    tokens = _TOKEN_SPLIT.split(base)
    # BraTS 2023 joins everything with hyphens (BraTS-GLI-00000-000-t1n): its last part names the scan.
    # Two-part BIDS entities (acq-t2, ce-gd) are labels, not the scan's modality, and stay whole.
    tokens += [t.rsplit("-", 1)[1] for t in tokens if t.count("-") >= 2]
    found = {_ALIASES[t] for t in tokens if t in _ALIASES}
    return found.pop() if len(found) == 1 else None
