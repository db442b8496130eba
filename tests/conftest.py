"""Shared test settings: paths to the shared references and a switch for CI's strictness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "aldm-tiny"
IN_CI = os.environ.get("CI", "").lower() == "true"

# CI runs alone on 2 cores; on a shared machine MRTRANSLATE_TEST_THREADS=1 avoids oversubscription.
torch.set_num_threads(int(os.environ.get("MRTRANSLATE_TEST_THREADS", min(2, torch.get_num_threads()))))


def require_reference(path: Path = REFERENCE) -> Path:
    """The shared reference folder; a failure in CI (where it must exist), a skip elsewhere."""
    if not path.exists():
        if IN_CI:
            pytest.fail(f"reference data {path} is missing: CI must have ../shared beside the clone")
        where = path.relative_to(SHARED).as_posix() if path.is_relative_to(SHARED) else str(path)
        pytest.skip(f"needs ../shared beside the clone (the authors' code, reference outputs and sample scans): "
                    f"../shared/{where} is not present")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_reference()
