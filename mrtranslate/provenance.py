"""What a written output records about how it was made, and the integer output option.

Sidecars hold the input's SHA-256, the model id and revision, the sampling settings and the UTC time, so an
output can be traced to exactly what produced it. ``int16`` outputs store ``round(1000 x value)``: 1000 is
the target's 99.5th percentile, which suits viewers and tools that expect integer MR intensities.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import OutputWriteError, UsageError

OUTPUT_DTYPES = ("float32", "int16")
INT16_SCALE = 1000.0


def hash_file(path: str | Path, digest: Any, chunk: int = 1 << 20) -> Any:
    """``digest`` (a hashlib object) updated with a file's bytes, read in chunks; returns it."""
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    return hash_file(path, hashlib.sha256()).hexdigest()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (JSON) through a temporary file in the same folder and a rename, so that no
    reader ever sees a half-written record; the folder is made if needed."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputWriteError(f"could not write {path} ({exc}): check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(folder: Path | str, hint: str = "choose another output folder") -> None:
    """Refuse, before any work, an output ``folder`` that cannot be made or written: an existing file where it
    or one of its parents should be a folder, or a folder without write permission (OutputWriteError)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputWriteError(f"cannot write to {folder}: {probe} is a file, not a folder: {hint}")
    if probe.is_dir():
        try:  # os.access misleads for root and on some network file systems: try a file instead
            fd, tmp = tempfile.mkstemp(prefix=".mrtranslate-", suffix=".tmp", dir=probe)
        except OSError as exc:
            raise OutputWriteError(f"cannot write to {folder} ({exc.strerror or exc}): {hint}") from None
        os.close(fd)
        os.unlink(tmp)


def per_target(record: dict[str, Any], targets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One record per target from a run record of ``targets`` (``Translator.run_record``): each names its target
    and its own strength (the run record holds one strength per target where the model sets them per pair) and,
    with an uncertainty map, its own kind of map."""
    strengths = record["strength"]
    kinds = record.get("uncertainty_kind")
    return {t: {**record, "target": t, "strength": strengths[i] if isinstance(strengths, list) else strengths,
                **({"uncertainty_kind": kinds.get(t)} if isinstance(kinds, dict) else {})}
            for i, t in enumerate(targets)}


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second, e.g. ``2025-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def input_provenance(path: str | Path | None) -> dict[str, Any]:
    """``input_sha256`` and ``created`` of an output made from the file ``path`` (None: no file)."""
    return {"input_sha256": sha256_file(path) if path is not None and Path(path).is_file() else None,
            "created": utc_now()}


def check_output_dtype(dtype: str) -> str:
    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"output dtype {dtype!r} is not supported: use {' or '.join(OUTPUT_DTYPES)}")
    return dtype


def as_output_dtype(img: nib.Nifti1Image, dtype: str) -> nib.Nifti1Image:
    """``img`` (float32, 1 = the target's 99.5th percentile) as ``dtype``: float32 unchanged, int16 as
    ``round(1000 x value)`` (clipped to the int16 range) with no scaling in the header."""
    if check_output_dtype(dtype) == "float32":
        return img
    data = np.clip(np.rint(np.asarray(img.dataobj, dtype=np.float32) * INT16_SCALE), 0, np.iinfo(np.int16).max)
    header = img.header.copy()
    header.set_data_dtype(np.int16)
    out = type(img)(data.astype(np.int16), img.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["descrip"] = (bytes(img.header["descrip"]).rstrip(b"\0") + b" x1000")[:79]
    return out


def output_record(dtype: str) -> dict[str, Any]:
    """How the stored values relate to the model's intensity scale."""
    if dtype == "int16":
        return {"output_dtype": "int16", "output_scale": INT16_SCALE}
    return {"output_dtype": "float32", "output_scale": 1.0}
