"""Dataset runs: translate, or complete, every subject of a BraTS tree, a BIDS dataset or a flat folder.

>>> from mrtranslate.datasets import translate_dataset, complete_dataset
>>> translate_dataset("bids/", to=["flair"], source="t1")      # -> bids/derivatives/mrtranslate/...
>>> complete_dataset("brats/", out_dir="brats-complete/")      # every missing contrast of every subject

Subjects are found by :func:`mrtranslate.layout.find_subjects`, as ``evaluate`` and ``train`` find them; a
folder of image files without subject folders is a flat folder, each file one input. Outputs are named in
the input's convention (:mod:`mrtranslate.datasets.names`); outputs that exist are skipped and counted, so a
run that stopped resumes where it was; ``part``/``num_parts`` give each of several jobs its own share of the
subjects (every ``num_parts``-th subject from ``part``, in sorted order).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..pipeline.best_source import choose_source
from .names import (
    bids_name,
    bids_uri,
    brats_name,
    derivative_description,
    flat_name,
    split_suffix,
)
from ..errors import (
    DatasetLayoutError,
    ModalityError,
    MRTranslateError,
    OutputExistsError,
    UsageError,
    on_command_line,
    option,
)
from ..imaging.layout import _subjects_in as subjects_in
from ..imaging.layout import find_subjects
from ..modalities import canonical, canonical_list, guess_from_filename
from ..provenance import as_output_dtype, check_writable, input_provenance, output_record, per_target, write_json_atomic

logger = logging.getLogger(__name__)

LAYOUTS = ("bids", "brats", "flat")


@dataclass
class Job:
    """One source image of one subject and the outputs translated from it."""

    case: str
    source: str | None  # None: guessed from the file name when the job runs
    path: Path
    outputs: dict[str, Path]
    sources: list[str]  # what the sidecars name as Sources
    subject_files: dict[str, Path] = field(default_factory=dict)  # every scan of the subject (for --preprocess)


@dataclass
class DatasetSummary:
    """What a dataset run did. ``failed`` holds ``(subject, message)``."""

    subjects: int = 0
    done: int = 0
    skipped: int = 0
    images_written: int = 0
    images_skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    out_root: Path | None = None
    part: tuple[int, int] = (0, 1)

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        part = f" (part {self.part[0]} of {self.part[1]})" if self.part[1] > 1 else ""
        return (f"{_count(self.subjects, 'subject')}{part}: {self.done} translated "
                f"({_count(self.images_written, 'image')} written), {self.skipped} already done, "
                f"{len(self.failed)} failed; {_count(self.images_skipped, 'existing output')} kept")


def _count(n: int, noun: str) -> str:
    """``1 subject``, ``2 subjects``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- finding the layout and the jobs ------------------------------------------------------------------
def detect_layout(root: Path) -> str:
    """``"bids"`` (a ``dataset_description.json`` or ``sub-*`` folders), ``"brats"`` (subject folders) or
    ``"flat"`` (image files directly in ``root``)."""
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder: pass a dataset folder or image files")
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if bids_subject_root(root) is not None or (root / "dataset_description.json").is_file() or any(p.name.startswith("sub-") for p in folders):
        return "bids"
    has_files = any(split_suffix(p.name)[1] for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    subjects = any(_has_images(p) for p in folders)
    if not has_files and not subjects:
        raise DatasetLayoutError(
            f"{root} is a folder without images (.nii, .nii.gz, .mgz) or subject folders holding them: pass image "
            "files or a dataset folder (BraTS, BIDS); convert DICOM folders with dcm2niix first"
        )
    return "flat" if has_files and not subjects else "brats"


def bids_subject_root(folder: Path) -> Path | None:
    """The BIDS dataset of ``folder`` when ``folder`` is one of its subjects (``sub-XX`` with ``anat/`` or
    ``ses-*/anat/``), else None."""
    if folder.name.startswith("sub-") and ((folder / "anat").is_dir() or any(
            (p / "anat").is_dir() for p in folder.glob("ses-*"))):
        return folder.parent
    return None


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and split_suffix(p.name)[1] for p in folder.iterdir())


def _written_by_us(path: Path) -> bool:
    """An image with a ``.json`` record beside it that says mrtranslate wrote it (never an input)."""
    side = path.with_name(split_suffix(path.name)[0] + ".json")
    try:
        return side.is_file() and "mrtranslate_version" in side.read_text(encoding="utf-8")
    except OSError:
        return False


def default_out_root(root: Path, layout: str) -> Path | None:
    """BIDS: ``<root>/derivatives/mrtranslate``; flat: beside the inputs (None); BraTS: none (must be given)."""
    if layout == "bids":
        return (bids_subject_root(root) or root) / "derivatives" / "mrtranslate"
    if layout == "flat":
        return None
    raise UsageError(f"{root} is a BraTS-style dataset: pass {option('out_dir')} for the folder of translated "
                     "subjects (its subject folders mirror the input's)")


def _flat_jobs(root: Path, targets: Sequence[str], source: str | None, out_root: Path | None) -> list[Job]:
    jobs = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not split_suffix(path.name)[1] or _written_by_us(path):
            continue
        named = guess_from_filename(path.name)
        if source is not None and named is not None and named != source:
            continue  # another contrast of the same subject: not an input of this run
        src = source or named
        wanted = [t for t in targets if t != src]
        if not wanted:
            continue
        jobs.append(Job(case=split_suffix(path.name)[0], source=src, path=path,
                        outputs={t: (out_root or root) / flat_name(path, t) for t in wanted}, sources=[path.name]))
    if not jobs:
        raise DatasetLayoutError(f"no input images found in {root}: expected .nii, .nii.gz or .mgz files")
    return jobs


def _subject_jobs(subject: Any, root: Path, layout: str, out_root: Path, targets: Sequence[str] | None,
                  source: str | None, modalities: Sequence[str], best: Mapping[str, str] | None) -> list[Job]:
    """The jobs of one subject: translate to ``targets`` (None: every contrast the subject lacks)."""
    have = [m for m in subject.files if m in modalities]
    if targets is None:
        wanted = [m for m in modalities if m not in subject.files]
    else:
        wanted = [t for t in targets if t != source]
    by_source: dict[str, list[str]] = {}
    for t in wanted:
        if source is not None:
            if source not in subject.files:
                raise DatasetLayoutError(f"subject {subject.case!r} has no {source} image (it has "
                                         f"{', '.join(subject.files)}): pass another {option('source')} or leave it out")
            src = source
        else:
            src = choose_source(t, [m for m in have if m != t], modalities, best, subject.case)
        by_source.setdefault(src, []).append(t)
    jobs = []
    for src, outs in by_source.items():
        path = subject.files[src]
        rel = path.parent.relative_to(root)
        # one subject folder given as the dataset: its outputs still go in OUT/<case>/, as for a dataset
        folder = out_root / (subject.case if rel == Path(".") and layout == "brats" else rel)
        if layout == "bids":
            names = {t: folder / bids_name(path, t) for t in outs}
            sources = [bids_uri(root, path)]
        else:
            names = {t: folder / brats_name(subject.case, path, t) for t in outs}
            sources = [path.relative_to(root).as_posix()]
        jobs.append(Job(case=subject.case, source=src, path=path, outputs=names, sources=sources,
                        subject_files=dict(subject.files)))
    return jobs


def plan_dataset(root: Path | str, targets: Sequence[str] | None, *, source: str | None = None,
                 out_dir: Path | str | None = None, modalities: Sequence[str], best: Mapping[str, str] | None = None,
                 part: int = 0, num_parts: int = 1
                 ) -> tuple[str, Path, Path | None, list[tuple[str, list[Job] | str]]]:
    """The layout, the dataset's root (the BIDS dataset of a subject folder), the output root and, per subject
    of this part, its jobs (or why it cannot run)."""
    root = Path(root)
    check_part(part, num_parts)
    layout = check_dataset(root, out_dir, targets is None)
    out_root = Path(out_dir) if out_dir is not None else default_out_root(root, layout)
    if layout == "flat":
        jobs = _flat_jobs(root, targets, source, out_root)
        per: list[tuple[str, list[Job] | str]] = [(j.case, [j]) for j in jobs]
    else:
        per = []
        dataset = bids_subject_root(root) if layout == "bids" else None
        subjects = sorted(subjects_in(root), key=lambda s: s.case) if dataset is not None else find_subjects(root)
        root = dataset or root
        for subject in subjects:
            try:
                per.append((subject.case, _subject_jobs(subject, root, layout, out_root, targets, source,
                                                        modalities, best)))
            except MRTranslateError as exc:
                per.append((subject.case, " ".join(str(exc).split())))
    return layout, root, out_root, per[part::num_parts]


def check_dataset(root: Path | str, out_dir: Path | str | None, completing: bool) -> str:
    """The layout of ``root``, after the checks that need no model (a folder of images or subjects; an output
    folder where the layout has no default one, and one that can be written): a CLI runs them before loading
    a model."""
    layout = detect_layout(Path(root))
    if layout == "flat" and completing:
        layout = "brats"  # complete: a folder of image files is one subject
    out_root = Path(out_dir) if out_dir is not None else default_out_root(Path(root), layout)
    if out_root is not None:  # refused here, before a model loads, rather than after the first subject
        check_writable(out_root, f"choose another {option('out_dir').rstrip('=')}")
    return layout


def check_part(part: int, num_parts: int) -> None:
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise UsageError(f"{option('num_parts', num_parts)}: use a whole number >= 1")
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < num_parts:
        slurm = ", e.g. --part $SLURM_ARRAY_TASK_ID" if on_command_line() else ""
        raise UsageError(f"{option('part', part)}: use 0 .. {num_parts - 1} ({option('num_parts', num_parts)}){slurm}")


# -- running ------------------------------------------------------------------------------------------
def run_dataset(translator: Any, root: Path | str, targets: Sequence[str] | None = None, *,
                source: str | None = None, out_dir: Path | str | None = None,
                best_source: Mapping[str, str] | None = None, overwrite: bool = False,
                continue_on_error: bool = False, part: int = 0, num_parts: int = 1, progress: bool = True,
                output_dtype: str = "float32", preprocess: bool = False) -> DatasetSummary:
    """Translate every subject of ``root`` with a loaded :class:`~mrtranslate.translator.Translator`.

    ``targets`` None completes each subject (every contrast of the model it lacks); otherwise each subject is
    translated into ``targets`` from ``source`` (None: per target the best contrast the subject has).
    ``best_source`` ``{target: source}`` overrides the model's ``best_source``. Without ``continue_on_error``
    the first failing subject raises; with it, failures are collected in the summary. ``preprocess``
    (completion only; the preprocess extra): each subject's scans as acquired are co-registered to one
    reference, brain-extracted and translated on the reference grid (:mod:`mrtranslate.preprocess.subject`).
    """
    root = Path(root)
    if preprocess:
        if targets is not None:
            raise UsageError("preprocess= works when completing subjects (mrtranslate complete --preprocess)")
        from ..preprocess.brain import check_available

        check_available()
    src = canonical(source) if source is not None else None
    names = canonical_list(targets) if targets is not None else None
    modalities = translator.modalities
    for t in names or ():
        if t not in modalities:
            raise ModalityError(f"target {t!r} is not a modality of this model ({', '.join(modalities)})")
    best = {**(translator.pipeline.config.best_source or {}), **(best_source or {})}
    layout, root, out_root, per = plan_dataset(root, names, source=src, out_dir=out_dir, modalities=modalities,
                                         best=best, part=part, num_parts=num_parts)
    summary = DatasetSummary(subjects=len(per), out_root=out_root, part=(part, num_parts))
    with logging_redirect_tqdm() if progress else contextlib.nullcontext():  # warnings above the bar, not in it
        _run_subjects(translator, root, layout, out_root, per, summary, overwrite, continue_on_error, progress,
                      output_dtype, preprocess)
    return summary


def _run_subjects(translator: Any, root: Path, layout: str, out_root: Path | None,
                  per: list[tuple[str, list[Job] | str]], summary: DatasetSummary, overwrite: bool,
                  continue_on_error: bool, progress: bool, output_dtype: str, preprocess: bool = False) -> None:
    described = False
    for case, jobs in tqdm(per, desc="subjects", unit="subject", disable=not progress):
        try:
            if isinstance(jobs, str):
                raise DatasetLayoutError(jobs)
            foreign = [p for j in jobs for p in j.outputs.values() if p.exists() and not _written_by_us(p)]
            if foreign:  # e.g. --out-dir is the dataset itself and the subject has the target: never touch it
                raise OutputExistsError(f"{foreign[0]} exists and has no mrtranslate record beside it (it may be "
                                        f"an input): choose an {option('out_dir')} outside the dataset, or move the file")
            pending = [(j, [t for t, p in j.outputs.items() if overwrite or not p.exists()]) for j in jobs]
            n_skip = sum(len(j.outputs) - len(w) for j, w in pending)
            summary.images_skipped += n_skip
            if not any(w for _, w in pending):
                summary.skipped += 1
                logger.info("skipping %s: its outputs exist", case)
                continue
            if layout == "bids" and not described:
                _describe(root, out_root, translator)
                described = True
            prepared = _prepare(translator, jobs) if preprocess else None
            for job, wanted in pending:
                if wanted:
                    summary.images_written += _run_job(translator, job, wanted, overwrite, output_dtype, prepared)
            summary.done += 1
        except Exception as exc:  # noqa: BLE001 - with continue_on_error one subject's failure never stops the run
            if not continue_on_error:
                raise
            logger.debug("%s failed", case, exc_info=True)
            what = "" if isinstance(exc, MRTranslateError) else f"{type(exc).__name__}: "
            summary.failed.append((case, what + " ".join(str(exc).split())))
            if progress:
                tqdm.write(f"error: {case}: {summary.failed[-1][1]}")


def _describe(root: Path, out_root: Path | None, translator: Any) -> None:
    if out_root is None:
        return
    path = out_root / "dataset_description.json"
    if not path.exists():
        r = translator.resolved
        model = "in-memory" if r is None else f"{r.path.name} (bundled)" if r.source == "bundled" else str(r.repo_id or r.path)
        write_json_atomic(path, derivative_description(root, out_root, model, r.revision if r is not None else None))


def _prepare(translator: Any, jobs: list[Job]) -> Any:
    """A subject's scans registered to its reference and brain-extracted; mask and transforms beside its outputs."""
    from ..preprocess.subject import prepare_subject

    folder = next(iter(jobs[0].outputs.values())).parent
    return prepare_subject(jobs[0].subject_files, jobs[0].case, folder, device=translator.pipeline.device)


def _run_job(translator: Any, job: Job, wanted: list[str], overwrite: bool, output_dtype: str,
             prepared: Any = None) -> int:
    from ..imaging.volume import save_image

    bound = translator(job.path if prepared is None else prepared.volumes[job.source], source=job.source)
    logger.info("%s: %s -> %s (from %s)", job.case, bound.source, ", ".join(wanted), job.path.name)
    result = bound.to(*wanted, progress=False)
    images = result if isinstance(result, dict) else {wanted[0]: result}
    record = {**bound.run_record(wanted), "input": str(job.path), **input_provenance(job.path),
              **output_record(output_dtype), **(prepared.record() if prepared is not None else {})}
    if bound.brain_mask is not None:  # skull_strip=True: the mask beside the outputs (same input, same mask)
        folder = next(iter(job.outputs.values())).parent
        mask = save_image(bound.brain_mask, folder / f"{split_suffix(job.path.name)[0]}_brainmask.nii.gz",
                          overwrite=True, inputs=[job.path])
        record["brain_mask"] = mask.name
    for t, own in per_target(record, wanted).items():
        path = job.outputs[t]
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists: pass {option('overwrite', True)} to replace it")
        side = {"Sources": job.sources, "Synthetic": True,
                "Description": f"Synthetic {t} translated from {bound.source} by mrtranslate", **own}
        save_image(as_output_dtype(images[t], output_dtype), path, overwrite=overwrite, inputs=[job.path])
        write_json_atomic(path.with_name(split_suffix(path.name)[0] + ".json"), side)
    return len(wanted)


# -- the Python entry points --------------------------------------------------------------------------
def _load(translator: Any, model: Any, kwargs: dict[str, Any]) -> Any:
    if translator is not None:
        return translator
    from ..translator import Translator

    kwargs.setdefault("progress", False)
    return Translator.from_pretrained(model, **kwargs)


def translate_dataset(root: Path | str, to: Sequence[str], *, source: str | None = None,
                      out_dir: Path | str | None = None, model: Any = None, translator: Any = None,
                      overwrite: bool = False, continue_on_error: bool = False, part: int = 0, num_parts: int = 1,
                      progress: bool = True, output_dtype: str = "float32",
                      best_source: Mapping[str, str] | None = None, **translator_kwargs: Any) -> DatasetSummary:
    """Translate every subject (or file) of a dataset folder into ``to``; see :func:`run_dataset`.

    ``translator`` (a loaded Translator) or ``model`` with ``translator_kwargs`` for ``Translator.from_pretrained``.
    """
    tr = _load(translator, model, dict(translator_kwargs))
    return run_dataset(tr, root, to, source=source, out_dir=out_dir, best_source=best_source, overwrite=overwrite,
                       continue_on_error=continue_on_error, part=part, num_parts=num_parts, progress=progress,
                       output_dtype=output_dtype)


def complete_dataset(root: Path | str, *, out_dir: Path | str | None = None, model: Any = None,
                     translator: Any = None, best_source: Mapping[str, str] | None = None, overwrite: bool = False,
                     continue_on_error: bool = False, part: int = 0, num_parts: int = 1, progress: bool = True,
                     output_dtype: str = "float32", preprocess: bool = False,
                     **translator_kwargs: Any) -> DatasetSummary:
    """Synthesise, for every subject of ``root`` (a dataset or one subject folder), each contrast of the
    model it lacks, from the contrast that predicts it best (the model's ``best_source``, overridden by
    ``best_source``, else :data:`mrtranslate.pipeline.best_source.DEFAULT_ORDER`). ``preprocess``: scans as
    acquired (skull on, each on its own grid) are co-registered, brain-extracted and completed on the grid of
    the reference scan (T1ce, else T1); see :mod:`mrtranslate.preprocess.subject`."""
    tr = _load(translator, model, dict(translator_kwargs))
    return run_dataset(tr, root, None, out_dir=out_dir, best_source=best_source, overwrite=overwrite,
                       continue_on_error=continue_on_error, part=part, num_parts=num_parts, progress=progress,
                       output_dtype=output_dtype, preprocess=preprocess)


__all__ = ["LAYOUTS", "DatasetSummary", "Job", "detect_layout", "plan_dataset", "run_dataset", "translate_dataset",
           "complete_dataset"]
