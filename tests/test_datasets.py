"""Dataset runs (`mrtranslate DIR --to ...`, `mrtranslate complete`): names in the input's convention,
sidecars, BIDS derivative description, resuming, failures, parts, and the model's best source per target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _translate_utils import files_under, small_model, write_head  # noqa: F401

import mrtranslate
from mrtranslate.pipeline.best_source import DEFAULT_ORDER, choose_source, parse_best_source, ranked_sources
from mrtranslate.cli import main
from mrtranslate.datasets.names import bids_name, brats_name
from mrtranslate.datasets.run import complete_dataset, detect_layout, translate_dataset
from mrtranslate.errors import DatasetLayoutError, UsageError
from mrtranslate.translator import Translator

FAST = ("--steps", "1", "--samples", "1")


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def bids_dataset(root: Path) -> Path:
    """sub-01 with T1w and T2w; sub-02 in ses-1 with a run-1 T1w only."""
    write_head(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    write_head(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz", shape=(20, 26, 19))
    write_head(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_run-1_T1w.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    return root


@pytest.fixture()
def best_model(small_model: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The small model with a best source per target: flair from t1 (the default order would take t2)."""
    folder = shutil.copytree(small_model, tmp_path / "best-model")
    index = json.loads((folder / "model_index.json").read_text())
    index["best_source"] = {"flair": "t1"}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


# -- BIDS ----------------------------------------------------------------------------------------------
def test_bids_dataset_goes_to_derivatives_with_sidecars_and_resumes(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                   capsys: pytest.CaptureFixture) -> None:
    root = bids_dataset(tmp_path / "bids")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    code, out, err = run(capsys, root, "--to", "flair", "t2", "--source", "t1", "--model", small_model, *FAST, "-q")
    assert (code, out, err) == (0, "", "")
    deriv = root / "derivatives" / "mrtranslate"
    assert files_under(deriv) == {
        "dataset_description.json",
        "sub-01/anat/sub-01_desc-synth_FLAIR.nii.gz", "sub-01/anat/sub-01_desc-synth_FLAIR.json",
        "sub-01/anat/sub-01_desc-synth_T2w.nii.gz", "sub-01/anat/sub-01_desc-synth_T2w.json",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_FLAIR.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_FLAIR.json",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_T2w.json",
    }
    assert {p: p.read_bytes() for p in before} == before  # inputs untouched
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "mrtranslate" and generated["Version"] == mrtranslate.__version__
    assert str(small_model.resolve()) in generated["Description"]
    assert description["DatasetLinks"] == {"raw": "../.."}
    side = sidecar(deriv / "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_FLAIR.nii.gz")
    assert side["Sources"] == ["bids:raw:sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w.nii.gz"]
    assert side["Synthetic"] is True and side["source_modality"] == "t1" and side["target"] == "flair"
    assert len(side["input_sha256"]) == 64 and side["created"].endswith("Z") and side["steps"] == 1
    out_img = nib.load(str(deriv / "sub-01/anat/sub-01_desc-synth_T2w.nii.gz"))
    assert out_img.shape == nib.load(str(root / "sub-01/anat/sub-01_T1w.nii.gz")).shape

    # a rerun skips everything and says so; a deleted output is made again, the rest counted as skipped
    stamp = (deriv / "sub-01/anat/sub-01_desc-synth_T2w.nii.gz").read_bytes()
    code, out, _ = run(capsys, root, "--to", "flair", "t2", "--source", "t1", "--model", small_model, *FAST)
    assert code == 0
    assert out.strip().splitlines()[-1] == ("2 subjects: 0 translated (0 images written), 2 already done, 0 failed; "
                                            "4 existing outputs kept")
    (deriv / "sub-02/ses-1/anat/sub-02_ses-1_run-1_desc-synth_T2w.nii.gz").unlink()
    code, out, _ = run(capsys, root, "--to", "flair", "t2", "--source", "t1", "--model", small_model, *FAST)
    assert code == 0
    assert out.strip().splitlines()[-1] == ("2 subjects: 1 translated (1 image written), 1 already done, 0 failed; "
                                            "3 existing outputs kept")
    assert (deriv / "sub-01/anat/sub-01_desc-synth_T2w.nii.gz").read_bytes() == stamp


def test_bids_names_keep_the_source_entities_and_mark_the_target() -> None:
    src = Path("sub-01_ses-2_acq-fast_ce-gadolinium_run-3_desc-x_T1w.nii.gz")
    assert bids_name(src, "flair") == "sub-01_ses-2_acq-fast_run-3_desc-synth_FLAIR.nii.gz"
    assert bids_name(Path("sub-01_run-1_T2w.nii"), "t1ce") == "sub-01_ce-gadolinium_run-1_desc-synth_T1w.nii.gz"


def test_brats_names_follow_the_subjects_own_style() -> None:
    assert brats_name("Brats18_2013_11_1", Path("Brats18_2013_11_1_t1.nii.gz"), "flair") == "Brats18_2013_11_1_flair_synth.nii.gz"
    assert brats_name("BraTS-MET-00110-000", Path("BraTS-MET-00110-000-t1c.nii.gz"), "t2") == "BraTS-MET-00110-000-t2w-synth.nii.gz"
    assert brats_name("TCGA-FG-6692", Path("TCGA-FG-6692_t1_bet.nii.gz"), "flair") == "TCGA-FG-6692_fla_bet_synth.nii.gz"
    assert brats_name("case", Path("other.nii.gz"), "t1ce") == "case_t1ce_synth.nii.gz"


# -- BraTS and complete --------------------------------------------------------------------------------
def brats_tree(root: Path) -> Path:
    """Three subjects in three BraTS styles, each missing some contrasts."""
    write_head(root / "A_2021" / "A_2021_t1.nii.gz")
    write_head(root / "A_2021" / "A_2021_t2.nii.gz")
    write_head(root / "A_2021" / "A_2021_seg.nii.gz")  # a label map is neither source nor target
    write_head(root / "B-2023" / "B-2023-t1c.nii.gz")
    write_head(root / "C_tk" / "C_tk_t1_bet.nii.gz")
    write_head(root / "C_tk" / "C_tk_t1c_bet.nii.gz")
    write_head(root / "C_tk" / "C_tk_t2_bet.nii.gz")
    write_head(root / "C_tk" / "C_tk_fla_bet.nii.gz")
    return root


def test_complete_fills_exactly_the_missing_contrasts_from_the_models_best_source(
        best_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = brats_tree(tmp_path / "brats")
    before = files_under(root)
    code, out, err = run(capsys, "complete", root, "-o", tmp_path / "out", "--model", best_model, *FAST)
    assert code == 0, err
    assert files_under(root) == before
    assert files_under(tmp_path / "out") == {
        f"{case}{name}{sep}synth.{e}" for e in ("nii.gz", "json") for case, names, sep in (
            ("A_2021/A_2021", ("_t1ce", "_flair"), "_"), ("B-2023/B-2023", ("-t1n", "-t2w", "-t2f"), "-"))
        for name in names
    }
    assert out.strip().splitlines()[-1] == ("3 subjects: 2 translated (5 images written), 1 already done, 0 failed; "
                                            "0 existing outputs kept")
    sources = {p.name: sidecar(p)["source_modality"] for p in (tmp_path / "out").rglob("*.nii.gz")}
    # flair from t1 as the model says (the default order would take t2); t1ce from t1 by the default order;
    # B-2023 has only t1ce, the source of everything
    assert sources == {"A_2021_t1ce_synth.nii.gz": "t1", "A_2021_flair_synth.nii.gz": "t1",
                       "B-2023-t1n-synth.nii.gz": "t1ce", "B-2023-t2w-synth.nii.gz": "t1ce",
                       "B-2023-t2f-synth.nii.gz": "t1ce"}
    assert sidecar(tmp_path / "out/A_2021/A_2021_flair_synth.nii.gz")["Sources"] == ["A_2021/A_2021_t1.nii.gz"]
    # the user overrides the model's choice
    code, _, err = run(capsys, "complete", root, "-o", tmp_path / "out2", "--model", best_model, "--best-source",
                       "FLAIR=t2w", *FAST, "-q")
    assert code == 0, err
    assert sidecar(tmp_path / "out2/A_2021/A_2021_flair_synth.nii.gz")["source_modality"] == "t2"


def test_complete_of_one_subject_folder_and_in_python(small_model: Path, tmp_path: Path) -> None:  # noqa: F811
    subject = tmp_path / "case"
    write_head(subject / "case-t2w.nii.gz")
    summary = complete_dataset(subject, out_dir=tmp_path / "out", model=small_model, steps=1, progress=False)
    assert summary.ok and (summary.done, summary.images_written) == (1, 3)
    # in OUT/<case>/, as for a dataset of subjects
    assert files_under(tmp_path / "out") == {f"case/case-{s}-synth.{e}" for s in ("t1n", "t1c", "t2f")
                                             for e in ("nii.gz", "json")}
    assert {sidecar(p)["source_modality"] for p in (tmp_path / "out").rglob("*.nii.gz")} == {"t2"}
    again = complete_dataset(subject, out_dir=tmp_path / "out", translator=Translator.from_pretrained(
        small_model, steps=1, progress=False), progress=False)
    assert (again.done, again.skipped, again.images_skipped) == (0, 1, 3)


def test_brats_tree_needs_an_out_dir(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    root = brats_tree(tmp_path / "brats")
    before = files_under(tmp_path)
    code, out, err = run(capsys, root, "--to", "flair", "--model", small_model)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--out-dir" in err
    assert files_under(tmp_path) == before


def test_continue_on_error_reports_each_failed_subject_and_exits_1(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture) -> None:
    root = brats_tree(tmp_path / "brats")
    (root / "B-2023" / "B-2023-t1c.nii.gz").write_bytes(b"not an image")
    code, out, err = run(capsys, root, "--to", "flair", "-o", tmp_path / "out", "--model", small_model, *FAST,
                         "--continue-on-error", "-q")
    assert code == 1
    assert out.strip() == "3 subjects: 2 translated (2 images written), 0 already done, 1 failed; 0 existing outputs kept"
    failed = [ln for ln in err.splitlines() if ln.startswith("  ")]
    assert len(failed) == 1 and failed[0].startswith("  B-2023: ") and "B-2023-t1c.nii.gz" in failed[0]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.nii.gz")) == ["A_2021_flair_synth.nii.gz", "C_tk_fla_bet_synth.nii.gz"]
    # without --continue-on-error the first failure stops the run with one line
    code, out, err = run(capsys, root, "--to", "t2", "--source", "t1ce", "-o", tmp_path / "out", "--model",
                         small_model, *FAST, "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "A_2021" in err and "--source" in err


def test_parts_split_the_subjects_deterministically(small_model: Path, tmp_path: Path,  # noqa: F811
                                                    capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    for i in range(5):
        write_head(root / f"S{i}" / f"S{i}_t1.nii.gz")
    seen = []
    for k in range(2):
        code, out, _ = run(capsys, root, "--to", "t2", "-o", tmp_path / "out", "--model", small_model, *FAST,
                           "--part", k, "--num-parts", 2)
        assert code == 0
        seen.append({p.parent.name for p in (tmp_path / "out").rglob("*.nii.gz")} - set().union(*seen))
    assert seen == [{"S0", "S2", "S4"}, {"S1", "S3"}]
    for bad in (("--part", "2", "--num-parts", "2"), ("--num-parts", "0")):
        code, out, err = run(capsys, root, "--to", "t2", "-o", tmp_path / "out", "--model", small_model, *bad)
        assert code == 2 and ("--part" in err or "--num-parts" in err)
    code, _, err = run(capsys, root / "S0" / "S0_t1.nii.gz", "--to", "t2", "--part", "1", "--num-parts", "2")
    assert code == 2 and "dataset folder" in err


# -- flat folders ------------------------------------------------------------------------------------
def test_flat_folder_translates_each_file_and_never_reads_its_own_outputs(small_model: Path, tmp_path: Path,  # noqa: F811
                                                                          capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "flat"
    write_head(root / "a_T1w.nii.gz")
    write_head(root / "b_T1w.nii.gz")
    write_head(root / "b_T2w.nii.gz")  # another contrast: not an input of a --source t1 run
    assert detect_layout(root) == "flat"
    code, _, err = run(capsys, root, "--to", "flair", "--source", "t1", "--model", small_model, *FAST, "-q")
    assert code == 0, err
    assert files_under(root) == {"a_T1w.nii.gz", "b_T1w.nii.gz", "b_T2w.nii.gz", "a_T1w_flair.nii.gz",
                                 "a_T1w_flair.json", "b_T1w_flair.nii.gz", "b_T1w_flair.json"}
    # without --source each file's name says its contrast; the flair outputs written above are not inputs
    summary = translate_dataset(root, ["flair"], model=small_model, steps=1, progress=False)
    assert (summary.subjects, summary.done, summary.skipped) == (3, 1, 2)
    assert (root / "b_T2w_flair.nii.gz").is_file() and not (root / "a_T1w_flair_flair.nii.gz").exists()


def test_layout_detection(tmp_path: Path) -> None:
    bids_dataset(tmp_path / "b")
    brats_tree(tmp_path / "t")
    assert (detect_layout(tmp_path / "b"), detect_layout(tmp_path / "t")) == ("bids", "brats")
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        detect_layout(tmp_path / "missing")


# -- best source ----------------------------------------------------------------------------------------
def test_best_source_order_and_parsing() -> None:
    mods = ("t1", "t1ce", "t2", "flair")
    assert ranked_sources("flair", mods) == list(DEFAULT_ORDER["flair"])
    assert ranked_sources("flair", mods, {"flair": "t1"}) == ["t1", "t2", "t1ce"]
    assert choose_source("t1ce", ["t2", "flair"], mods) == "flair"
    with pytest.raises(DatasetLayoutError, match="no contrast"):
        choose_source("t1", [], mods, case="x")
    assert parse_best_source(["FLAIR=T2w", "t1c=t1"]) == {"flair": "t2", "t1ce": "t1"}
    for bad in (["flair"], ["flair=flair"], ["flair=t2", "t2f=t1"]):
        with pytest.raises(UsageError):
            parse_best_source(bad)


def test_info_shows_the_models_best_source_or_the_default(best_model: Path, small_model: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "info", best_model, "--json")
    assert code == 0 and json.loads(out)["best_source"] == {"t1": "t1ce", "t1ce": "t1", "t2": "flair", "flair": "t1"}
    code, out, _ = run(capsys, "info", small_model, "--json")
    assert json.loads(out)["best_source"]["flair"] == "t2"
    index = json.loads((best_model / "model_index.json").read_text())
    index["best_source"] = {"flair": "flair"}
    (best_model / "model_index.json").write_text(json.dumps(index))
    code, _, err = run(capsys, "info", best_model)
    assert code == 1 and "best_source" in err


def test_integer_outputs_are_scaled_by_1000(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    inp = write_head(tmp_path / "x_T1w.nii.gz")
    assert run(capsys, inp, "--to", "t2", "--model", small_model, *FAST, "-q", "-o", tmp_path / "f")[0] == 0
    assert run(capsys, inp, "--to", "t2", "--model", small_model, *FAST, "-q", "-o", tmp_path / "i",
               "--output-dtype", "int16")[0] == 0
    f = nib.load(str(tmp_path / "f" / "x_T1w_t2.nii.gz"))
    i = nib.load(str(tmp_path / "i" / "x_T1w_t2.nii.gz"))
    assert i.get_data_dtype() == np.int16 and np.array_equal(i.affine, f.affine)
    assert np.array_equal(np.asarray(i.dataobj), np.rint(np.asarray(f.dataobj) * 1000).astype(np.int16))
    assert sidecar(tmp_path / "i" / "x_T1w_t2.nii.gz")["output_scale"] == 1000.0
    code, _, err = run(capsys, inp, "--to", "t2", "--model", small_model, "--output-dtype", "uint8")
    assert code == 2 and "int16" in err


def test_dataset_mistakes_are_reported_before_a_model_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    no_model = tmp_path / "no-model"  # loading it would fail: the dataset's error must come first
    code, _, err = run(capsys, "complete", tmp_path / "missing", "--model", no_model)
    assert code == 1 and "is not a folder" in err and "model" not in err.split(":", 2)[-1]
    root = brats_tree(tmp_path / "brats")
    code, _, err = run(capsys, root, "--to", "t2", "--model", no_model)
    assert code == 2 and "--out-dir" in err
    code, _, err = run(capsys, "complete", root / "A_2021", "--model", no_model)
    assert code == 2 and "--out-dir" in err


def test_a_file_mrtranslate_did_not_write_is_never_replaced(small_model: Path, tmp_path: Path,  # noqa: F811
                                                            capsys: pytest.CaptureFixture) -> None:
    root = brats_tree(tmp_path / "brats")
    real = (root / "C_tk" / "C_tk_fla_bet.nii.gz").read_bytes()
    theirs = root / "C_tk" / "C_tk_fla_bet_synth.nii.gz"  # named as an output, but not written by mrtranslate
    theirs.write_bytes(real)
    code, out, err = run(capsys, root, "--to", "flair", "--source", "t1", "-o", root, "--model", small_model, *FAST,
                         "--overwrite", "--continue-on-error", "-q")
    assert code == 1 and "C_tk: " in err and "no mrtranslate record" in err
    assert (root / "C_tk" / "C_tk_fla_bet.nii.gz").read_bytes() == real and theirs.read_bytes() == real
    assert sidecar(root / "A_2021" / "A_2021_flair_synth.nii.gz")["Synthetic"] is True  # A had no flair: written


def test_complete_of_one_bids_subject_writes_into_its_datasets_derivatives(small_model: Path,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    root = bids_dataset(tmp_path / "bids")
    summary = complete_dataset(root / "sub-02", model=small_model, steps=1, progress=False)
    assert (summary.subjects, summary.done, summary.images_written) == (1, 1, 3)
    assert files_under(root / "derivatives" / "mrtranslate") == {"dataset_description.json"} | {
        f"sub-02/ses-1/anat/sub-02_ses-1_{name}.{ext}" for ext in ("nii.gz", "json")
        for name in ("ce-gadolinium_run-1_desc-synth_T1w", "run-1_desc-synth_T2w", "run-1_desc-synth_FLAIR")}


@pytest.mark.parametrize("command", [(), ("complete",)])
def test_dataset_runs_and_complete_sample_with_the_solver_asked_for(command: tuple[str, ...], small_model: Path,  # noqa: F811
                                                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    write_head(root / "S0" / "S0_t1.nii.gz")
    to = () if command else ("--to", "t2")
    code, _, err = run(capsys, *command, root, *to, "-o", tmp_path / "out", "--model", small_model, *FAST,
                       "--solver", "dpm++2m", "-q")
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*.json")]
    assert records and {r["solver"] for r in records} == {"dpm++2m"}
