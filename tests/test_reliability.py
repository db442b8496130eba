"""Reliability of the entry points: Ctrl-C and write failures leave no partial file, the documented exit codes,
memory budgets refused before allocating, and no pickle loading outside the converter's explicit opt-in."""

from __future__ import annotations

import ast
import errno
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
from _translate_utils import files_under, grid_model, small_model, write_head  # noqa: F401

from mrtranslate import Translator, errors
from mrtranslate.cli import main
from mrtranslate.cli.app import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from mrtranslate.errors import MemoryBudgetError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mrtranslate"


def _cli_process(*args: object, cwd: Path) -> subprocess.Popen:
    """``python -m mrtranslate ARGS`` from this checkout, stdout and stderr piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # Ctrl-C's default action in the child, as in a terminal: a test run launched in the background inherits
    # SIGINT ignored, and the child would inherit that too
    return subprocess.Popen([sys.executable, "-m", "mrtranslate", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _read_until(proc: subprocess.Popen, marker: bytes, limit_s: float) -> bytes:
    """Read the process's stderr until ``marker`` shows (tqdm bars end lines with \\r, not \\n), it exits,
    or ``limit_s`` passes (a guard against a hang, not a timing check)."""
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + limit_s
        while marker not in seen and time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
    return seen


# -- Ctrl-C ------------------------------------------------------------------------------------------------
def test_sigint_while_sampling_exits_130_and_leaves_no_file(grid_model: Path, tmp_path: Path) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    # 500 steps (the most the published spacing allows) keep it sampling long after the bar appears
    proc = _cli_process(inp, "--to", "t2", "flair", "--model", grid_model, "--steps", "500", cwd=tmp_path)
    try:
        seen = _read_until(proc, b"sampling", limit_s=180)
        assert b"sampling" in seen, f"the CLI never started sampling: {seen.decode(errors='replace')}"
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted") and "Traceback" not in err
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz"}  # no output, no record, no .*.tmp* file


def test_ctrl_c_while_writing_keeps_finished_files_and_no_partial_one(small_model: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    real_save = nib.save
    calls = []

    def save_then_interrupt(img, filename, *args, **kwargs):
        calls.append(Path(filename).name)
        if len(calls) == 1:
            return real_save(img, filename, *args, **kwargs)
        Path(filename).write_bytes(b"\x1f\x8b half of an image")  # bytes reach the disk, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", save_then_interrupt)
    code = main([str(inp), "--to", "t2", "flair", "--model", str(small_model), "--steps", "1", "-q"])
    assert code == 130 and capsys.readouterr().err.strip() == "interrupted"
    assert [c.startswith(".sub-01_T1w_") and ".tmp" in c for c in calls] == [True, True]  # written under temp names
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "sub-01_T1w_t2.nii.gz", "sub-01_T1w_t2.json"}
    assert nib.load(str(tmp_path / "sub-01_T1w_t2.nii.gz")).shape == nib.load(str(inp)).shape  # complete


def test_disk_full_while_writing_is_one_line_exit_1_and_no_partial_file(small_model: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")

    def disk_full(img, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x1f\x8b truncated")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", disk_full)
    code = main([str(inp), "--to", "t2", "--model", str(small_model), "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: could not write") and "No space left on device" in err
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz"}


# -- the real entry point: sys.exit codes and one-line errors -------------------------------------------------
@pytest.mark.parametrize(("case", "expected"), [("missing", 2), ("not-nifti", 1), ("version", 0)])
def test_python_m_mrtranslate_exit_codes(case: str, expected: int, small_model: Path, tmp_path: Path) -> None:
    if case == "missing":
        args = [tmp_path / "missing_T1w.nii.gz", "--to", "t2", "--model", small_model]
    elif case == "not-nifti":
        (tmp_path / "notes_T1w.nii.gz").write_text("not an image\n")
        args = [tmp_path / "notes_T1w.nii.gz", "--to", "t2", "--model", small_model]
    else:
        args = ["--version"]
    before = files_under(tmp_path)
    proc = _cli_process(*args, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == expected
    err_lines = err.decode().strip().splitlines()
    if expected == 0:
        assert out.decode().startswith("mrtranslate ") and err_lines == []
    else:
        assert len(err_lines) == 1 and err_lines[0].startswith("error: "), err_lines
    assert files_under(tmp_path) == before


def test_readme_documents_the_exit_codes_the_cli_uses() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|$", readme, flags=re.MULTILINE))
    assert set(table) == {"0", "1", "2", "130"}
    assert (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)
    assert "usage" in table["2"] and "interrupt" in table["130"].lower() and "runtime" in table["1"]
    # every error class maps onto a documented code: usage errors 2, everything else 1
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.MRTranslateError):
            assert cls.exit_code == (2 if issubclass(cls, errors.UsageError) else 1), cls


def test_usage_errors_are_value_errors_for_python_callers() -> None:
    """A caller's `except ValueError` catches a bad argument, as with any Python library; other errors are not."""
    from mrtranslate.pipeline import SamplingOptions

    with pytest.raises(ValueError, match="steps = 0"):
        SamplingOptions(steps=0)
    assert issubclass(errors.ModalityError, ValueError) and issubclass(errors.UsageError, errors.MRTranslateError)
    assert not issubclass(errors.InputImageError, ValueError)


# -- memory budget ---------------------------------------------------------------------------------------------
def test_a_volume_over_the_memory_budget_is_refused_before_encoding(small_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tr = Translator.from_pretrained(small_model, max_memory="1KB", progress=False)
    encoded = []
    monkeypatch.setattr(tr.pipeline, "encode", lambda *a, **k: encoded.append(a))
    bound = tr(write_head(tmp_path / "sub-01_T1w.nii.gz"))
    with pytest.raises(MemoryBudgetError, match="needs about") as info:
        bound.to("t2", "flair")
    assert encoded == [] and "\n" not in str(info.value)
    assert Translator.from_pretrained(small_model, max_memory="1GB", steps=1, progress=False)(
        tmp_path / "sub-01_T1w.nii.gz").to("t2").shape == (20, 26, 18)


# -- no pickle outside the converter ----------------------------------------------------------------------------
def _torch_load_calls(tree: ast.Module) -> list[ast.Call]:
    """Calls of torch.load (also through ``import torch as x``, ``from torch import load``, torch.serialization)."""
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name in ("torch", "torch.serialization")}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}

    def is_torch(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id in torch_names
        return isinstance(expr, ast.Attribute) and expr.attr == "serialization" and is_torch(expr.value)

    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "load" and is_torch(node.func.value))
            or (isinstance(node.func, ast.Name) and node.func.id in load_names)
        )
    ]


def _guarded_by_trust_pickle(tree: ast.Module, call: ast.Call) -> bool:
    """True when, in the statements before ``call``'s statement in its block, ``if not trust_pickle: raise ...``."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for i, stmt in enumerate(block):
                if not hasattr(stmt, "body") and any(n is call for n in ast.walk(stmt)):  # the simple statement
                    return any(
                        isinstance(prev, ast.If) and isinstance(prev.test, ast.UnaryOp)
                        and isinstance(prev.test.op, ast.Not) and isinstance(prev.test.operand, ast.Name)
                        and prev.test.operand.id == "trust_pickle" and isinstance(prev.body[-1], ast.Raise)
                        for prev in block[:i]
                    )
    return False


def test_torch_load_only_in_the_converter_and_weights_only_unless_trust_pickle() -> None:
    found: list[tuple[str, bool]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):  # no other way to unpickle either
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                assert not (func.value.id in ("pickle", "dill", "joblib") and func.attr in ("load", "loads")), where
        for call in _torch_load_calls(tree):
            assert where == "mrtranslate/convert.py", f"torch.load in {where}:{call.lineno}"
            flags = [k.value for k in call.keywords if k.arg == "weights_only"]
            assert len(flags) == 1 and isinstance(flags[0], ast.Constant), f"{where}:{call.lineno} needs weights_only="
            safe = flags[0].value is True
            assert safe or _guarded_by_trust_pickle(tree, call), f"{where}:{call.lineno}: unguarded weights_only=False"
            found.append((f"{where}:{call.lineno}", safe))
    assert sorted(safe for _, safe in found) == [False, True], found  # the safe load and the one opt-in


def test_the_pickle_check_sees_what_it_should() -> None:
    """The AST checks above catch aliases and an unguarded unsafe load (so they can fail)."""
    sneaky = ast.parse("import torch as th\nfrom torch.serialization import load as L\nth.load(p)\nL(p)\n")
    assert len(_torch_load_calls(sneaky)) == 2
    unguarded = ast.parse("def f(p, trust_pickle):\n    if trust_pickle:\n        pass\n"
                          "    return torch.load(p, weights_only=False)\n")
    assert not _guarded_by_trust_pickle(unguarded, _torch_load_calls(unguarded)[0])
    after = ast.parse("def f(p, trust_pickle):\n    x = torch.load(p, weights_only=False)\n"
                      "    if not trust_pickle:\n        raise E()\n")
    assert not _guarded_by_trust_pickle(after, _torch_load_calls(after)[0])
    guarded = ast.parse("def f(p, trust_pickle):\n    if not trust_pickle:\n        raise E()\n"
                        "    return torch.load(p, weights_only=False)\n")
    assert _guarded_by_trust_pickle(guarded, _torch_load_calls(guarded)[0])
