"""`python -m build` makes a wheel that installs in a fresh venv (after CPU torch) and whose CLI works.

Slow (minutes: an isolated build, a venv, torch and the wheel's dependencies): ``pytest -m slow tests/test_wheel.py``.
The wheel is built from a copy of the package with a tiny model added under ``mrtranslate/bundled/`` so that
the package-data globs are checked whether or not the demo model has landed; the installed copy must find
that model by its bundled name and translate with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
from _tiny import save_tiny
from _translate_utils import SMALL, write_head

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_NAME = "wheel-check-model"
#: What pyproject.toml's package-data globs take from mrtranslate/bundled/.
BUNDLED_SUFFIXES = (".json", ".safetensors", ".md")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{tail}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist and wheel of a copy of this checkout's package plus a tiny bundled model."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "mrtranslate", src / "mrtranslate",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    save_tiny(src / "mrtranslate" / "bundled" / BUNDLED_NAME, **SMALL)
    _run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(src)], cwd=work)
    wheels = list((work / "dist").glob("mrtranslate-*.whl"))
    sdists = list((work / "dist").glob("mrtranslate-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return {"work": work, "src": src, "wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_every_module_and_the_bundled_model_files(built: dict[str, Path]) -> None:
    src = built["src"]
    with zipfile.ZipFile(built["wheel"]) as zf:
        names = set(zf.namelist())
    modules = {p.relative_to(src).as_posix() for p in (src / "mrtranslate").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    bundled = {p.relative_to(src).as_posix() for p in (src / "mrtranslate" / "bundled").rglob("*")
               if p.is_file() and p.name.endswith(BUNDLED_SUFFIXES)}
    model = f"mrtranslate/bundled/{BUNDLED_NAME}"
    assert {f"{model}/model_index.json", f"{model}/README.md", f"{model}/vqgan/config.json",
            f"{model}/vqgan/model.safetensors", f"{model}/unet/config.json", f"{model}/unet/model.safetensors",
            f"{model}/scheduler/config.json"} <= bundled  # the copy holds the model ...
    assert bundled <= names, sorted(bundled - names)  # ... and so does the wheel (the demo model too, once it lands)
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    # the example subject the README's main job reads, inside the package
    assert {f"mrtranslate/examples/phantom_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(built["wheel"]) as zf:
        assert "mrtranslate = mrtranslate.cli:main" in zf.read(entry_points).decode()
    with tarfile.open(built["sdist"]) as tf:
        in_sdist = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert bundled <= in_sdist, sorted(bundled - in_sdist)


def test_wheel_installs_in_a_fresh_venv_and_its_cli_works(built: dict[str, Path]) -> None:
    work = built["work"]
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    py, cli = venv / "bin" / "python", venv / "bin" / "mrtranslate"
    _run([str(py), "-m", "pip", "install", "--quiet", "torch==2.13.0"], cwd=work)  # CPU torch first (README)
    _run([str(py), "-m", "pip", "install", "--quiet", str(built["wheel"])], cwd=work)

    help_text = _run([str(cli), "--help"], cwd=work).stdout
    assert "Usage: mrtranslate" in help_text and "translate" in help_text and "info" in help_text
    assert "--to" in _run([str(cli), "translate", "--help"], cwd=work).stdout
    version = _run([str(py), "-c", "import mrtranslate; print(mrtranslate.__version__)"], cwd=work).stdout.strip()
    assert _run([str(cli), "--version"], cwd=work).stdout.strip() == f"mrtranslate {version}"
    where = _run([str(py), "-c", "import mrtranslate; print(mrtranslate.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv)  # the installed copy, not this checkout

    info = json.loads(_run([str(cli), "info", BUNDLED_NAME, "--json"], cwd=work).stdout)
    assert info["source"] == "bundled" and info["grid"] == list(SMALL["grid"])
    inp = write_head(work / "data" / "sub-01_T1w.nii.gz")
    _run([str(cli), str(inp), "--to", "t2", "--model", BUNDLED_NAME, "--steps", "1", "-q"], cwd=work)
    out = nib.load(str(work / "data" / "sub-01_T1w_t2.nii.gz"))
    assert out.shape == nib.load(str(inp)).shape

    # the README's main job, with no clone, twice (here with the tiny model and one step)
    example = _run([str(cli), "example", "t1"], cwd=work).stdout.strip()
    assert Path(example).is_relative_to(venv) and Path(example).is_file()
    job = [str(cli), example, "--to", "t2", "flair", "--out-dir", "mrtranslate-example", "--model", BUNDLED_NAME,
           "--steps", "1"]
    first = _run(job, cwd=work)
    again = _run(job, cwd=work)
    assert "already done" not in first.stderr and "2 outputs already done" in again.stderr
    assert sorted(p.name for p in (work / "mrtranslate-example").iterdir()) == [
        "phantom_t1_flair.json", "phantom_t1_flair.nii.gz", "phantom_t1_t2.json", "phantom_t1_t2.nii.gz"]
