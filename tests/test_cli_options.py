"""Options users of other tools expect: --threads, --token (and HF_TOKEN), mps and cuda:N devices, --verbose,
provenance in every record."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from _translate_utils import small_model, write_head  # noqa: F401

from mrtranslate import hub
from mrtranslate.cli import main
from mrtranslate.errors import UsageError
from mrtranslate.runtime import resolve_device


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_record_holds_the_inputs_sha256_and_the_time(small_model: Path, tmp_path: Path,  # noqa: F811
                                                      capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "s_T1w.nii.gz")
    assert run(capsys, inp, "--to", "t2", "--model", small_model, "--steps", "1", "-q")[0] == 0
    record = json.loads((tmp_path / "s_T1w_t2.json").read_text())
    assert record["input_sha256"] == hashlib.sha256(inp.read_bytes()).hexdigest()
    assert record["created"].endswith("Z") and record["model_revision"] is None and record["output_dtype"] == "float32"


def test_threads_sets_torchs_threads(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    inp = write_head(tmp_path / "s_T1w.nii.gz")
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    try:
        assert run(capsys, inp, "--to", "t2", "--model", small_model, "--steps", "1", "-q", "--threads", want)[0] == 0
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    code, _, err = run(capsys, inp, "--to", "t2", "--model", small_model, "--threads", "0")
    assert code == 2 and "--threads" in err


def test_token_reaches_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seen = []

    def fake_from_hub(repo_id, revision, cache_dir, local_files_only, progress, token=None):
        seen.append(token)
        raise hub.ModelNotFoundError("stop here")

    monkeypatch.setattr(hub, "_from_hub", fake_from_hub)
    inp = write_head(tmp_path / "s_T1w.nii.gz")
    assert run(capsys, inp, "--to", "t2", "--model", "org/private-model", "--token", "hf_secret")[0] == 1
    assert run(capsys, "complete", tmp_path, "-o", tmp_path / "o", "--model", "org/private-model", "--token", "hf_x")[0] == 1
    assert seen == ["hf_secret", "hf_x"]


def test_devices_mps_and_cuda_n(capsys: pytest.CaptureFixture) -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(UsageError, match="mps"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    for command in ("translate", "complete"):
        main([command, "--help"])
        assert "cuda:N" in capsys.readouterr().out


def test_verbose_says_what_is_skipped(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,  # noqa: F811
                                      caplog: pytest.LogCaptureFixture) -> None:
    write_head(tmp_path / "data" / "S0" / "S0_t1.nii.gz")
    args = (tmp_path / "data", "--to", "t2", "-o", tmp_path / "out", "--model", small_model, "--steps", "1", "-q")
    assert run(capsys, *args)[0] == 0
    logger = logging.getLogger("mrtranslate")
    logger.setLevel(logging.WARNING)  # a plain run's level
    try:
        assert run(capsys, *args)[0] == 0
        assert not [r for r in caplog.records if "skipping S0" in r.getMessage()]
        assert run(capsys, *args, "--verbose")[0] == 0
        assert [r for r in caplog.records if "skipping S0" in r.getMessage()]
    finally:
        logger.setLevel(logging.NOTSET)
