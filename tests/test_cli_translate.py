"""`mrtranslate INPUT... --to ...` and `mrtranslate info`: outputs, records, resuming, user errors, exit codes, help."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from _hubserver import hub_env, hub_server, set_hub_env  # noqa: F401
from _translate_utils import assert_same_geometry, files_under, grid_affine, head_image, small_model, write_head  # noqa: F401

import mrtranslate
from mrtranslate import hub
from mrtranslate.cli import app, main
from mrtranslate.translator import Translator


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """``mrtranslate ARGS`` in this process: exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


class CountTo:
    """Counts ``Translator.to`` calls (and their targets) made anywhere, then runs the real method."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, ...]] = []
        original = Translator.to

        def counted(tr: Translator, *targets: str, **kwargs):
            self.calls.append(targets)
            return original(tr, *targets, **kwargs)

        monkeypatch.setattr(Translator, "to", counted)


# -- the main job ---------------------------------------------------------------------------------------
def test_writes_each_target_on_the_input_grid_with_a_run_record(small_model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    shape = (30, 36, 14)  # LPS, 2.5 x 2.5 x 5 mm, oblique; qform and sform with different codes
    inp = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(head_image(shape, grid_affine(shape, (-2.5, -2.5, 5.0), (6.0, -4.0, 9.0)), qform_code=1, sform_code=4),
             str(inp))
    before = inp.read_bytes()

    code, out, err = run(capsys, inp, "--to", "T2w", "FLAIR", "--model", small_model, "--steps", "1", "-q")
    assert (code, out, err) == (0, "", "")
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "sub-01_T1w_t2.nii.gz", "sub-01_T1w_t2.json",
                                     "sub-01_T1w_flair.nii.gz", "sub-01_T1w_flair.json"}
    assert inp.read_bytes() == before
    ref = nib.load(str(inp))
    for target in ("t2", "flair"):
        img = nib.load(str(tmp_path / f"sub-01_T1w_{target}.nii.gz"))
        assert_same_geometry(img, ref)
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and np.isfinite(data).all() and not data[np.asarray(ref.dataobj) <= 0].any()
        record = json.loads((tmp_path / f"sub-01_T1w_{target}.json").read_text())
        assert record["target"] == target and record["targets"] == ["t2", "flair"]
        assert record["source_modality"] == "t1"
        assert (record["model"], record["model_source"]) == (str(small_model.resolve()), "local")
        assert (record["steps"], record["eta"], record["strength"], record["samples"], record["seed"]) == (1, 1.0, 1.0, 1, 0)
        assert record["input"] == str(inp) and record["mrtranslate_version"] == mrtranslate.__version__
    assert not np.array_equal(np.asarray(nib.load(str(tmp_path / "sub-01_T1w_t2.nii.gz")).dataobj),
                              np.asarray(nib.load(str(tmp_path / "sub-01_T1w_flair.nii.gz")).dataobj))


@pytest.mark.parametrize(("option", "values", "read"), [("strength", ("1", "0.5"), float),
                                                        ("samples", ("1", "3"), int)])
def test_sampling_options_change_the_output_and_are_recorded(option: str, values: tuple[str, str], read,
                                                             small_model: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """--strength (where sampling starts) and --samples (the mean of that many samples per target)."""
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    outputs = {}
    for value in values:
        code, _, err = run(capsys, inp, "--to", "t2", "--model", small_model, "--steps", "4", f"--{option}", value,
                           "-q", "-o", tmp_path / value)
        assert code == 0, err
        assert json.loads((tmp_path / value / "sub-01_T1w_t2.json").read_text())[option] == read(value)
        outputs[value] = np.asarray(nib.load(str(tmp_path / value / "sub-01_T1w_t2.nii.gz")).dataobj)
    assert not np.array_equal(*(outputs[v] for v in values))


def test_each_record_holds_its_own_pairs_strength(small_model: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """A model with pair_strength: each output's record names the strength its pair was sampled at."""
    from mrtranslate.pipeline import ALDMPipeline

    pipe = ALDMPipeline.from_pretrained(small_model)
    pipe.config.default_strength, pipe.config.pair_strength = 0.6, {"t1->flair": 0.3}
    model = pipe.save_pretrained(tmp_path / "pairs")
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    code, _, err = run(capsys, inp, "--to", "t2", "flair", "--model", model, "--steps", "4", "-q", "-o", tmp_path / "a")
    assert code == 0, err
    read = lambda folder, t: json.loads((tmp_path / folder / f"sub-01_T1w_{t}.json").read_text())  # noqa: E731
    assert (read("a", "t2")["strength"], read("a", "flair")["strength"]) == (0.6, 0.3)
    code, _, err = run(capsys, inp, "--to", "t2", "flair", "--model", model, "--steps", "4", "--strength", "0.6",
                       "-q", "-o", tmp_path / "b")
    assert code == 0, err
    assert (read("b", "t2")["strength"], read("b", "flair")["strength"]) == (0.6, 0.6)
    flair = [np.asarray(nib.load(str(tmp_path / f / "sub-01_T1w_flair.nii.gz")).dataobj) for f in ("a", "b")]
    assert not np.array_equal(*flair)


def test_out_dir_is_created_and_each_output_is_reported(small_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "in" / "BraTS2021_00001_t2.nii.gz")
    code, out, err = run(capsys, inp, "--to=t1", "--to", "t1ce", "-o", tmp_path / "out" / "deep",
                         "--model", small_model, "--steps", "1")
    assert code == 0, err
    assert files_under(tmp_path / "in") == {"BraTS2021_00001_t2.nii.gz"}
    assert files_under(tmp_path / "out" / "deep") == {
        "BraTS2021_00001_t2_t1.nii.gz", "BraTS2021_00001_t2_t1.json",
        "BraTS2021_00001_t2_t1ce.nii.gz", "BraTS2021_00001_t2_t1ce.json",
    }
    assert lines(out) == [f"wrote {tmp_path / 'out' / 'deep' / 'BraTS2021_00001_t2_t1.nii.gz'}",
                          f"wrote {tmp_path / 'out' / 'deep' / 'BraTS2021_00001_t2_t1ce.nii.gz'}"]


def test_same_seed_same_file_other_seed_differs(small_model: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    outputs = []
    for seed, folder in ((7, "a"), (7, "b"), (8, "c")):
        assert run(capsys, inp, "--to", "t2", "--model", small_model, "--steps", "2", "--eta", "1",
                   "--seed", seed, "-q", "-o", tmp_path / folder)[0] == 0
        outputs.append(np.asarray(nib.load(str(tmp_path / folder / "sub-01_T1w_t2.nii.gz")).dataobj))
        assert json.loads((tmp_path / folder / "sub-01_T1w_t2.json").read_text())["seed"] == seed
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_skip_existing_resumes_and_overwrite_replaces(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    t2, flair = tmp_path / "sub-01_T1w_t2.nii.gz", tmp_path / "sub-01_T1w_flair.nii.gz"
    common = ("--model", small_model, "--steps", "1", "-q")
    counter = CountTo(monkeypatch)
    assert run(capsys, inp, "--to", "t2", *common)[0] == 0
    t2_bytes, t2_stat = t2.read_bytes(), t2.stat()

    # t2 exists, written with another seed: refused, nothing written
    code, _, err = run(capsys, inp, "--to", "t2", "flair", "--seed", "1", *common)
    assert code == 2
    assert lines(err) == [f"error: {t2} exists: pass --overwrite to replace it or --skip-existing to resume"]
    assert not flair.exists() and counter.calls == [("t2",)]

    assert run(capsys, inp, "--to", "t2", "flair", "--skip-existing", *common)[0] == 0  # only the missing target
    assert counter.calls[-1] == ("flair",)
    assert flair.exists() and t2.read_bytes() == t2_bytes and t2.stat().st_mtime_ns == t2_stat.st_mtime_ns
    assert json.loads((tmp_path / "sub-01_T1w_flair.json").read_text())["targets"] == ["flair"]

    n_calls, flair_mtime = len(counter.calls), flair.stat().st_mtime_ns
    code, out, err = run(capsys, inp, "--to", "t2", "flair", "--skip-existing", *common)  # everything there: no work
    assert (code, out, err) == (0, "", "") and len(counter.calls) == n_calls
    assert flair.stat().st_mtime_ns == flair_mtime

    assert run(capsys, inp, "--to", "t2", "--overwrite", "--seed", "3", *common)[0] == 0
    assert t2.read_bytes() != t2_bytes
    assert json.loads((tmp_path / "sub-01_T1w_t2.json").read_text())["seed"] == 3
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "sub-01_T1w_t2.nii.gz", "sub-01_T1w_t2.json",
                                     "sub-01_T1w_flair.nii.gz", "sub-01_T1w_flair.json"}

    code, _, err = run(capsys, inp, "--to", "t2", "--overwrite", "--skip-existing", *common)
    assert code == 2 and "contradict" in err


def test_outputs_never_replace_an_input(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_head(tmp_path / "a_T1w.nii.gz")
    b = write_head(tmp_path / "a_T1w_t2.nii.gz", zooms=(3.9, 4.0, 4.0))  # named like a's t2 output
    before = {p: p.read_bytes() for p in (a, b)}
    counter = CountTo(monkeypatch)
    for flags in ((), ("--overwrite",), ("--skip-existing",)):
        code, out, err = run(capsys, a, b, "--source", "t1", "--to", "t2", "--model", small_model, *flags)
        assert code == 2, err
        assert lines(err) == [f"error: output {b} would replace the input {b}: rename it or pass --out-dir"]
        assert {p: p.read_bytes() for p in (a, b)} == before
        assert files_under(tmp_path) == {"a_T1w.nii.gz", "a_T1w_t2.nii.gz"}
    assert counter.calls == []


def test_two_inputs_that_would_write_one_file_are_refused(small_model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    x = write_head(tmp_path / "x" / "sub_T1w.nii.gz")
    y = write_head(tmp_path / "y" / "sub_T1w.nii.gz")
    code, _, err = run(capsys, x, y, "--to", "t2", "-o", tmp_path / "out", "--model", small_model)
    assert code == 2 and "would both be written to" in err
    code, _, err = run(capsys, x, x, "--to", "t2", "--model", small_model)
    assert code == 2 and "would both be written to" in err
    assert files_under(tmp_path) == {"x/sub_T1w.nii.gz", "y/sub_T1w.nii.gz"}


def test_continue_on_error_processes_the_rest_and_summarises(small_model: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "sub-00_T1w.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip")
    good = [write_head(tmp_path / f"sub-0{i}_T1w.nii.gz") for i in (1, 2)]
    args = (bad, *good, "--to", "t2", "--model", small_model, "--steps", "1", "-q")

    code, _, err = run(capsys, *args)  # the first failure stops the batch
    assert code == 1 and len(lines(err)) == 1 and lines(err)[0].startswith(f"error: {bad} is not an image")
    assert files_under(tmp_path) == {"sub-00_T1w.nii.gz", "sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"}

    code, _, err = run(capsys, *args, "--continue-on-error")
    assert code == 1
    assert (tmp_path / "sub-01_T1w_t2.nii.gz").is_file() and (tmp_path / "sub-02_T1w_t2.nii.gz").is_file()
    assert not (tmp_path / "sub-00_T1w_t2.nii.gz").exists()
    assert "1 of 3 inputs failed:" in err and f"  {bad}: {bad} is not an image" in err
    assert "Traceback" not in err


def test_continue_on_error_also_goes_on_after_an_unexpected_error(small_model: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = write_head(tmp_path / "sub-01_T1w.nii.gz"), write_head(tmp_path / "sub-02_T1w.nii.gz")
    original = Translator.to

    def out_of_memory_on_the_first(tr: Translator, *targets: str, **kwargs):
        if tr.volume.name == "sub-01_T1w":
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        return original(tr, *targets, **kwargs)

    monkeypatch.setattr(Translator, "to", out_of_memory_on_the_first)
    args = (first, second, "--to", "t2", "--model", small_model, "--steps", "1", "-q")
    code, _, err = run(capsys, *args)
    assert code == 1
    assert lines(err) == ["error: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB "
                          "(rerun with --debug for details)"]
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"}

    code, _, err = run(capsys, *args, "--continue-on-error")
    assert code == 1 and "Traceback" not in err
    assert lines(err)[-2:] == ["1 of 2 inputs failed:",
                               f"  {first}: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"]
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz",
                                     "sub-02_T1w_t2.nii.gz", "sub-02_T1w_t2.json"}


# -- user errors: one line, the documented exit code, nothing written ---------------------------------------
def _not_nifti(tmp_path: Path) -> Path:
    path = tmp_path / "notes_T1w.nii.gz"
    path.write_text("these are notes, not an image\n")
    return path


USER_ERRORS = {
    "missing file": (lambda d: [d / "missing_T1w.nii.gz", "--to", "t2"], 2, "does not exist: check the path"),
    "target typo": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "flairr"], 2,
                    "'flairr' was meant as a --to target, it is not a modality name"),
    "not a NIfTI": (lambda d: [_not_nifti(d), "--to", "t2"], 1, "is not an image nibabel can read"),
    "a folder": (lambda d: [(d / "dicom").mkdir() or d / "dicom", "--to", "t2", "--source", "t1"], 1, "is a folder"),
    "unknown target": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t5"], 2, "unknown modality 't5'"),
    "unknown source": (lambda d: [write_head(d / "s.nii.gz"), "--to", "t2", "--source", "pd"], 2,
                       "unknown modality 'pd'"),
    "source unknown": (lambda d: [write_head(d / "scan.nii.gz"), "--to", "t2"], 2, "cannot tell the modality"),
    "declared source is target": (lambda d: [write_head(d / "scan.nii.gz"), "--to", "t1", "--source", "T1w"], 2,
                                  "'t1' is the source modality"),
    "inferred source is target": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t1n"], 2,
                                  "'t1' is the source modality"),
    "no such model folder": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--model", d / "nope"], 1,
                             "no model folder at"),
    "not a model folder": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--model",
                                      (d / "empty").mkdir() or d / "empty"], 1, "model_index.json is missing"),
    "bad device": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--device", "tpu"], 2, "unknown device"),
    "bad steps": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--steps", "0"], 2, "steps"),
    "bad strength": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--strength", "1.5"], 2,
                     "strength = 1.5: use a number in [0, 1]"),
    "bad samples": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--samples", "0"], 2,
                    "samples = 0: use an integer from 1 to 64"),
    "memory budget": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--max-memory", "1KB"], 1,
                      "needs about"),
    "bad memory size": (lambda d: [write_head(d / "s_T1w.nii.gz"), "--to", "t2", "--max-memory", "lots"], 2,
                        "cannot read memory size"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_give_one_line_an_exit_code_and_write_nothing(case: str, small_model: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    make_args, expected_code, message = USER_ERRORS[case]
    args = make_args(tmp_path)
    if "--model" not in args:
        args += ["--model", small_model]
    before = files_under(tmp_path)
    code, out, err = run(capsys, *args)
    assert code == expected_code, err
    assert len(lines(err)) == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err + out
    assert files_under(tmp_path) == before


def test_without_a_model_the_bundled_default_runs_or_the_message_names_model(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    code, _, err = run(capsys, inp, "--to", "t2", "--steps", "1", "-q")
    if (hub.BUNDLED_DIR / hub.DEFAULT_MODEL / "model_index.json").is_file():
        assert code == 0, err
        assert_same_geometry(nib.load(str(tmp_path / "sub-01_T1w_t2.nii.gz")), nib.load(str(inp)))
    else:
        assert code == 1 and len(lines(err)) == 1 and "--model" in err and "not installed" in err
        assert files_under(tmp_path) == {"sub-01_T1w.nii.gz"}


@pytest.mark.parametrize(
    "args",
    [
        ["in.nii.gz", "--to", "t2", "--bogus"],  # unknown option
        ["in.nii.gz"],  # no --to
        ["--to", "t2"],  # no input
        ["in.nii.gz", "--to", "t2", "--steps", "many"],  # not a number
        ["info", "a", "b"],  # extra argument
    ],
)
def test_click_usage_errors_exit_2_without_traceback(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *args)
    assert code == 2
    # one line, as every error: what is wrong and where the options are listed
    assert lines(err) == [err.strip()] and err.startswith("error: ") and "--help" in err
    assert "Traceback" not in out + err and out == ""
    assert files_under(tmp_path) == set()


def test_unexpected_errors_exit_1_in_one_line_and_debug_shows_them(small_model: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("something inside\nbroke")

    monkeypatch.setattr(Translator, "from_pretrained", broken)
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    code, out, err = run(capsys, inp, "--to", "t2", "--model", small_model)
    assert code == 1
    assert lines(err) == ["error: RuntimeError: something inside broke (rerun with --debug for details)"]
    with pytest.raises(RuntimeError, match="something inside"):
        main([str(inp), "--to", "t2", "--model", str(small_model), "--debug"])
    assert files_under(tmp_path) == {"sub-01_T1w.nii.gz"}


# -- Hub models through the CLI ----------------------------------------------------------------------------
def test_hub_model_by_id_then_offline(hub_env, small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    commit = hub_env.add_repo("org/tiny-aldm", small_model)
    inp = write_head(tmp_path / "data" / "sub-01_T1w.nii.gz")
    out_file = tmp_path / "data" / "sub-01_T1w_t2.nii.gz"

    code, _, err = run(capsys, inp, "--to", "t2", "--model", "org/tiny-aldm", "--steps", "1", "-q")
    assert code == 0, err
    record = json.loads(out_file.with_name("sub-01_T1w_t2.json").read_text())
    assert (record["model"], record["model_source"], record["model_revision"]) == ("org/tiny-aldm", "hub", commit)
    first = out_file.read_bytes()

    n_requests = len(hub_env.requests)
    code, _, err = run(capsys, inp, "--to", "t2", "--model", "org/tiny-aldm", "--steps", "1", "-q",
                       "--offline", "--overwrite")
    assert code == 0, err
    assert len(hub_env.requests) == n_requests and out_file.read_bytes() == first

    code, _, err = run(capsys, inp, "--to", "flair", "--model", "org/other", "--offline")  # never downloaded
    assert code == 1 and len(lines(err)) == 1 and "not in the local cache" in err

    code, out, err = run(capsys, "info", "org/tiny-aldm", "--offline", "--json")
    assert code == 0 and json.loads(out)["revision"] == commit

    set_hub_env(monkeypatch, offline=True)  # HF_HUB_OFFLINE=1 without --offline
    code, _, err = run(capsys, inp, "--to", "t2", "--model", "org/tiny-aldm", "--steps", "1", "-q", "--overwrite")
    assert code == 0, err
    assert len(hub_env.requests) == n_requests
    assert files_under(tmp_path / "data") == {"sub-01_T1w.nii.gz", "sub-01_T1w_t2.nii.gz", "sub-01_T1w_t2.json"}


@pytest.mark.parametrize("fault", ["error500", "unknown repo", "no server"])
def test_unreachable_or_unknown_hub_model_fails_in_one_error_line(fault: str, hub_env, small_model: Path,  # noqa: F811
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hub_env.add_repo("org/tiny-aldm", small_model)
    if fault == "error500":
        hub_env.fault = "error500"
    elif fault == "no server":
        import socket

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        set_hub_env(monkeypatch, endpoint=f"http://127.0.0.1:{port}")
    model = "org/missing" if fault == "unknown repo" else "org/tiny-aldm"
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    code, out, err = run(capsys, inp, "--to", "t2", "--model", model, "-q")
    assert code == 1
    errors = [ln for ln in lines(err) if ln.startswith("error: ")]
    assert len(errors) == 1 and "org/" in errors[0] and "Traceback" not in err
    assert {p for p in files_under(tmp_path) if not p.startswith("hf-home/")} == {"sub-01_T1w.nii.gz"}


# -- info, version, help -------------------------------------------------------------------------------------------
def test_info_text_and_json(small_model: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "info", small_model, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"] == str(small_model.resolve()) and info["source"] == "local" and info["revision"] is None
    assert info["title"] == "tiny-test"
    assert info["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert (info["grid"], info["spacing_mm"]) == ([16, 24, 16], [4.0, 4.0, 4.0])
    assert info["components"] == ["vqgan", "unet", "scheduler"]
    assert info["vqgan_parameters"] > 0 and info["unet_parameters"] > 0
    assert (info["default_steps"], info["default_eta"], info["default_strength"]) == (3, 1.0, 1.0)

    code, out, _ = run(capsys, "info", small_model)
    assert code == 0
    text = dict(ln.split(": ", 1) for ln in lines(out))
    assert {k.strip(): v for k, v in text.items()}["grid"] == "[16, 24, 16]"
    shown = {k.strip() for k in text}
    assert len(text) == len(info) - 2 and not {"revision", "detail_refiner"} & shown  # no "revision: None"


def test_info_of_a_missing_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "info", tmp_path / "nope")
    assert code == 1 and out == "" and len(lines(err)) == 1 and "no model folder" in err
    code, out, err = run(capsys, "info", "nosuchname")  # a mistyped bundled name: the message lists them
    assert code == 1 and len(lines(err)) == 1 and "(brats-2mm, phantom-demo)" in err


def test_version(capsys: pytest.CaptureFixture) -> None:
    assert run(capsys, "--version") == (0, f"mrtranslate {mrtranslate.__version__}\n", "")


def _commands() -> dict:
    """Every command (and subcommand) by its words, e.g. ``"info"``; ``""`` is the top level."""
    from mrtranslate.cli import commands  # noqa: F401  (registers every command)

    group = typer.main.get_command(app)
    found = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        found[" ".join(path)] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + (name,))

    walk(group, ())
    return found


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    top = [name for name in _commands() if name and " " not in name]
    assert {"translate", "info"} <= set(top)
    for name in top:
        assert name in out


@pytest.mark.parametrize("command", sorted(n for n in _commands() if n))
def test_help_of_every_command_lists_every_option_with_a_help_text(command: str, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, *command.split(), "--help")
    assert code == 0
    for param in _commands()[command].params:
        assert getattr(param, "help", None), f"{command}: {param.name} has no help text"
        if param.param_type_name == "option":
            long_names = [o for o in param.opts if o.startswith("--")]
            assert long_names and all(o in out for o in long_names), f"{command}: {param.opts} missing from --help"
        assert " ".join(param.help.split()[:3]) in " ".join(out.replace("│", " ").split()), (command, param.name)
