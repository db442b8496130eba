"""What a new user meets first: the example scan in the package, running the main job twice, outputs that
cannot be written, one-line errors in the user's own words (options on the command line, keywords in Python)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _translate_utils import files_under, small_model, write_head  # noqa: F401

from mrtranslate import examples
from mrtranslate.cli import main
from mrtranslate.errors import ModalityError
from mrtranslate.hub import resolve_model
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--steps", "1")


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- the example scan ---------------------------------------------------------------------------------------
def test_the_example_subject_ships_in_the_package_on_the_default_models_grid(capsys: pytest.CaptureFixture) -> None:
    default = ALDMPipeline.from_pretrained(resolve_model(None).path).config.preprocessing
    files = examples.paths()
    assert set(files) == {"t1", "t1ce", "t2", "flair"}
    assert sum(p.stat().st_size for p in files.values()) < 2 << 20  # small enough for the wheel
    assert examples.path("T2w") == files["t2"]  # aliases, as everywhere
    ref = nib.load(str(files["t1"]))
    for modality, path in files.items():
        img = nib.load(str(path))
        assert path.is_relative_to(Path(examples.__file__).parent)
        assert list(img.shape) == list(default["grid"])
        assert np.allclose(img.header.get_zooms()[:3], default["spacing_mm"])
        assert np.array_equal(img.affine, ref.affine)
        # the repository's phantom subject, rounded to int16
        full = ROOT / "examples" / "data" / "Phantom_0_00000" / f"Phantom_0_00000_{modality}.nii.gz"
        if full.is_file():
            assert np.array_equal(np.asarray(img.dataobj), np.rint(nib.load(str(full)).get_fdata()).astype(np.int16))
    assert run(capsys, "example", "flair") == (0, f"{files['flair']}\n", "")
    code, _, err = run(capsys, "example", "pd")
    assert code == 2 and len(lines(err)) == 1 and "unknown modality" in err


# -- the main job, twice --------------------------------------------------------------------------------------
def test_the_main_job_run_again_finds_its_outputs_already_done(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    job = (examples.path("t1"), "--to", "t2", "flair", "--out-dir", out, "--model", small_model, *FAST)
    code, _, err = run(capsys, *job, "-q")
    assert code == 0, err
    written = {"phantom_t1_t2.nii.gz", "phantom_t1_t2.json", "phantom_t1_flair.nii.gz", "phantom_t1_flair.json"}
    assert files_under(out) == written
    record = json.loads((out / "phantom_t1_t2.json").read_text())
    assert record["request"]["model"] == str(small_model) and record["request"]["seed"] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_loading(*args, **kwargs):
        raise AssertionError("a rerun of a finished command must not load a model")

    monkeypatch.setattr(Translator, "from_pretrained", no_loading)
    code, stdout, err = run(capsys, *job)
    assert (code, stdout) == (0, "")
    assert lines(err) == [f"2 outputs already done by an earlier run of this command (kept; --overwrite redoes them): "
                          f"{out / 'phantom_t1_t2.nii.gz'}, {out / 'phantom_t1_flair.nii.gz'}"]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert run(capsys, *job, "-q") == (0, "", "")

    # another command (another seed) would replace them: refused before any work
    code, _, err = run(capsys, *job, "--seed", "1")
    assert code == 2 and lines(err) == [f"error: {out / 'phantom_t1_t2.nii.gz'} exists: pass --overwrite to replace "
                                        "it or --skip-existing to resume"]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    monkeypatch.undo()
    # one output removed: only it is made again
    (out / "phantom_t1_flair.nii.gz").unlink()
    code, _, err = run(capsys, *job)
    assert code == 0 and "1 output already done" in err
    assert files_under(out) == written and (out / "phantom_t1_t2.nii.gz").stat().st_mtime_ns == \
        stamps[out / "phantom_t1_t2.nii.gz"]


# -- outputs that cannot be written -------------------------------------------------------------------------
def test_an_output_folder_that_cannot_be_made_is_refused_before_the_model_loads(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    no_model = tmp_path / "no-model"  # loading it would fail: the output's error must come first
    code, out, err = run(capsys, inp, "--to", "t2", "--out-dir", blocker / "today", "--model", no_model)
    assert code == 1 and out == "" and lines(err) == [
        f"error: cannot write to {blocker / 'today'}: {blocker} is a file, not a folder: choose another --out-dir"]
    subject = tmp_path / "case"
    write_head(subject / "case_t1.nii.gz")
    code, _, err = run(capsys, "complete", subject, "-o", blocker, "--model", no_model)
    assert code == 1 and len(lines(err)) == 1 and "is a file, not a folder" in err
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "results", "case/case_t1.nii.gz"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_model_loads(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "in" / "sub-01_T1w.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run(capsys, inp, "--to", "t2", "-o", locked, "--model", tmp_path / "no-model")
    finally:
        locked.chmod(0o755)
    assert code == 1 and len(lines(err)) == 1 and f"cannot write to {locked}" in err


# -- words: options on the command line, keywords in Python ---------------------------------------------
def test_messages_name_options_on_the_command_line_and_keywords_in_python(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                          capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "scan.nii.gz")  # the name does not say the modality
    with pytest.raises(ModalityError) as caught:
        Translator.from_pretrained(small_model)(inp)
    assert "pass source=MODALITY, one of t1" in str(caught.value) and "--source" not in str(caught.value)
    code, _, err = run(capsys, inp, "--to", "t2", "--model", small_model, *FAST)
    assert code == 2 and "pass --source MODALITY, one of t1" in err and "source=" not in err
    brats = tmp_path / "brats"
    write_head(brats / "A" / "A_t1.nii.gz")
    with pytest.raises(Exception, match=r"pass out_dir= for the folder"):
        from mrtranslate.datasets import complete_dataset

        complete_dataset(brats, model=small_model)
    code, _, err = run(capsys, "complete", brats, "--model", small_model)
    assert code == 2 and "pass --out-dir for the folder" in err


def test_a_summary_of_one_subject_is_singular(small_model: Path, tmp_path: Path,  # noqa: F811
                                              capsys: pytest.CaptureFixture) -> None:
    subject = tmp_path / "case"
    write_head(subject / "case_t1.nii.gz")
    code, out, err = run(capsys, "complete", subject, "-o", tmp_path / "out", "--model", small_model, *FAST)
    assert code == 0, err
    assert lines(out)[-1] == "1 subject: 1 translated (3 images written), 0 already done, 0 failed; 0 existing outputs kept"
    assert files_under(tmp_path / "out") == {f"case/case_{m}_synth.{e}" for m in ("t1ce", "t2", "flair")
                                             for e in ("nii.gz", "json")}
