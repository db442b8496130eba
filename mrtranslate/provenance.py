"""What a written output records about how it was made, and the integer output option.

Sidecars hold the input's SHA-256, the model id and revision, the sampling settings and the UTC time, so an
output can be traced to exactly what produced it. ``int16`` outputs store ``round(1000 x value)``: 1000 is
the target's 99.5th percentile, which suits viewers and tools that expect integer MR intensities.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import UsageError

OUTPUT_DTYPES = ("float32", "int16")
INT16_SCALE = 1000.0


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
