"""Which contrast to translate from when a subject has several: the model's choice, the user's, or a default.

A model folder may say, per target, the source that predicts it best on its validation data
(``best_source`` in ``model_index.json``, written by ``mrtranslate export --best-source TARGET=SOURCE``).
Where it says nothing, or the subject lacks that source, :data:`DEFAULT_ORDER` ranks the sources: for the
T1 pair the other T1 (same sequence, with or without contrast agent), for the T2 pair the other T2-weighted
scan (FLAIR is a T2-weighted inversion recovery), then the remaining ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import DatasetLayoutError, UsageError
from ..modalities import canonical

#: Sources tried for each target, best first, when the model does not name one (or the subject lacks it).
DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "t1": ("t1ce", "t2", "flair"),
    "t1ce": ("t1", "flair", "t2"),
    "t2": ("flair", "t1ce", "t1"),
    "flair": ("t2", "t1ce", "t1"),
}


def parse_best_source(entries: Sequence[str]) -> dict[str, str]:
    """``["flair=t2", ...]`` (TARGET=SOURCE, names or aliases) -> ``{"flair": "t2"}``; malformed: UsageError."""
    out: dict[str, str] = {}
    for entry in entries:
        target, sep, source = entry.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise UsageError(f"--best-source {entry!r}: write TARGET=SOURCE, e.g. 'flair=t2'")
        t, s = canonical(target.strip()), canonical(source.strip())
        if t == s:
            raise UsageError(f"--best-source {entry!r}: a contrast cannot be its own source")
        if t in out:
            raise UsageError(f"--best-source names the target {t} twice")
        out[t] = s
    return out


def ranked_sources(target: str, modalities: Sequence[str], best: Mapping[str, str] | None = None) -> list[str]:
    """The sources of the model's ``modalities`` for ``target``, best first: ``best[target]`` (when given),
    then :data:`DEFAULT_ORDER`, then any other modality of the model in its own order."""
    order: list[str] = []
    for m in ([best[target]] if best and target in best else []) + list(DEFAULT_ORDER.get(target, ())) + list(modalities):
        if m != target and m in modalities and m not in order:
            order.append(m)
    return order


def choose_source(target: str, available: Sequence[str], modalities: Sequence[str],
                  best: Mapping[str, str] | None = None, case: str = "") -> str:
    """The best source for ``target`` among the contrasts a subject has (``available``)."""
    for m in ranked_sources(target, modalities, best):
        if m in available:
            return m
    raise DatasetLayoutError(
        f"subject {case!r} has no contrast the model can translate into {target} from (it has "
        f"{', '.join(available) or 'none'}; the model knows {', '.join(modalities)}): add a scan or leave the subject out"
    )
