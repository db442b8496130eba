"""The README's Python examples run as written, offline, on a fresh install: bundled models and the example
scan only. A snippet marked "your model here" is the one that is not runnable as written."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nibabel as nib
import pytest

from mrtranslate.pipeline import ALDMPipeline

ROOT = Path(__file__).resolve().parents[1]
NOT_RUNNABLE = "your model here"


def python_snippets(markdown: Path) -> list[str]:
    """The ```python blocks of a Markdown file, except the one after a line that says it is not runnable."""
    text = markdown.read_text(encoding="utf-8")
    snippets = []
    for m in re.finditer(r"([^\n]*)\n```python\n(.*?)```", text, flags=re.S):
        if NOT_RUNNABLE not in m.group(1).lower():
            snippets.append(m.group(2))
    return snippets


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working folder, no network (a Hub download would fail), no cached Hub models."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def _fast_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model loads with 1 step and 1 sample as its defaults: the snippet's code runs as written,
    its sampling made cheap enough for the quick tests (the slow test samples at the real defaults)."""
    original = ALDMPipeline.from_pretrained.__func__

    def fast(cls, *args, **kwargs):
        pipe = original(cls, *args, **kwargs)
        pipe.config = dataclasses.replace(pipe.config, default_steps=1, default_samples=1)
        return pipe

    monkeypatch.setattr(ALDMPipeline, "from_pretrained", classmethod(fast))


def test_the_readme_marks_its_one_hub_example_as_not_runnable() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    runnable = python_snippets(ROOT / "README.md")
    assert len(runnable) == 1 and "examples.path" in runnable[0]
    assert "org/aldm" not in text  # no placeholder Hub id where a runnable example stands
    assert re.search(r"your model here[^\n]*\n```python\n[^`]*from_pretrained\(\"your-org/", text, flags=re.I)


def test_the_readme_python_example_runs_offline(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_sampling(monkeypatch)
    (snippet,) = python_snippets(ROOT / "README.md")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    written = {p.name for p in offline.glob("*.nii.gz")}
    assert written == {"phantom_flair-synth.nii.gz", "phantom_t2-synth.nii.gz"}
    t1 = nib.load(str(scope["t1"]))
    for name in written:
        assert nib.load(str(offline / name)).shape == t1.shape
    assert set(scope["out"]) == {"t2", "flair"}


def test_the_datasets_guide_python_example_runs_offline(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _translate_utils import write_head

    _fast_sampling(monkeypatch)
    write_head(offline / "bids_dataset" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    write_head(offline / "brats_dataset" / "case" / "case_t1.nii.gz")
    for snippet in python_snippets(ROOT / "docs" / "datasets.md"):
        exec(compile(snippet, "docs/datasets.md", "exec"), {})  # noqa: S102
    assert (offline / "bids_dataset" / "derivatives" / "mrtranslate" / "sub-01" / "anat"
            / "sub-01_desc-synth_FLAIR.nii.gz").is_file()
    assert {p.name for p in (offline / "brats_completed" / "case").glob("*.nii.gz")} == {
        "case_t1ce_synth.nii.gz", "case_t2_synth.nii.gz", "case_flair_synth.nii.gz"}


@pytest.mark.slow
def test_the_readme_python_example_runs_offline_at_the_models_defaults(offline: Path) -> None:
    (snippet,) = python_snippets(ROOT / "README.md")
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102
    assert {p.name for p in offline.glob("*.nii.gz")} == {"phantom_flair-synth.nii.gz", "phantom_t2-synth.nii.gz"}
