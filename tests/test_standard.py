"""Output standardisation: each output's histogram moved onto the landmarks of real scans of its contrast."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _tiny import tiny_pipeline
from _translate_utils import arr, assert_same_geometry, oblique, small_model  # noqa: F401

from mrtranslate import Translator
from mrtranslate.cli import main
from mrtranslate.errors import ModelFormatError
from mrtranslate.evaluation.evaluate import model_fingerprint
from mrtranslate.pipeline import PipelineConfig
from mrtranslate.pipeline.standard import PERCENTILES, IntensityMap, scan_landmarks, standardise

#: landmarks of a contrast whose brain is mostly dark with a bright tail (made up, non-decreasing, 0..1)
TAIL = np.array([0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.24, 0.28, 0.32, 0.36, 0.41, 0.5, 0.6, 0.75, 0.86, 1.0])


def _standardised_model(folder: Path, targets=("flair",), landmarks=TAIL) -> Path:
    pipe = tiny_pipeline(grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0))
    pipe.config.output_standard = {"percentiles": list(PERCENTILES), "landmarks": {t: list(landmarks) for t in targets}}
    pipe.config.validate()
    return pipe.save_pretrained(folder)


# -- the map ------------------------------------------------------------------------------------------------------


def test_the_map_puts_the_images_own_percentiles_on_the_landmarks_and_keeps_voxel_order() -> None:
    rng = np.random.default_rng(0)
    values = rng.gamma(3.0, 0.2, size=20000)  # a skewed histogram unlike TAIL's
    out = standardise(values, PERCENTILES, TAIL)
    np.testing.assert_allclose(np.percentile(out, PERCENTILES), TAIL, atol=2e-3)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)  # monotone: the structure (voxel order) is kept
    assert out.dtype == np.float32 and (out >= 0).all()


def test_beyond_the_outer_landmarks_the_map_continues_with_the_end_slopes() -> None:
    own = np.array([0.0, 1.0, 2.0])
    m = IntensityMap(own, np.array([0.0, 0.5, 2.0]))
    np.testing.assert_allclose(m(np.array([-1.0, 0.5, 1.5, 3.0])), [0.0, 0.25, 1.25, 3.5])  # below: 0, not -0.5


def test_a_flat_histogram_stretch_gives_a_step_not_a_division_by_zero() -> None:
    values = np.concatenate([np.zeros(600), np.linspace(0.1, 1.0, 400)])  # 60 % of the voxels are one value
    out = standardise(values, PERCENTILES, TAIL)
    assert np.isfinite(out).all()
    assert np.all(np.diff(out[np.argsort(values, kind="stable")]) >= 0)


def test_scan_landmarks_are_on_the_scale_of_the_brains_own_percentiles() -> None:
    rng = np.random.default_rng(1)
    scan = np.zeros((20, 20, 20))
    scan[4:16, 4:16, 4:16] = rng.normal(500, 80, size=(12, 12, 12)).clip(1)
    marks = scan_landmarks(scan)
    assert marks[0] == pytest.approx(0.0) and marks[-1] == pytest.approx(1.0)  # 0.5th and 99.5th at 0 and 1
    assert np.all(np.diff(marks) > 0)
    assert marks[PERCENTILES.index(50)] == pytest.approx(0.5, abs=0.03)  # a symmetric histogram's median mid-way
    with pytest.raises(ValueError, match="no voxel > 0"):
        scan_landmarks(np.zeros((4, 4, 4)))


@pytest.mark.parametrize("entry, message", [
    ({"percentiles": [50, 10], "landmarks": {"flair": [0.0, 1.0]}}, "increasing"),
    ({"percentiles": [10, 50], "landmarks": {"flair": [0.0, 0.5, 1.0]}}, "one per percentile"),
    ({"percentiles": [10, 50], "landmarks": {"flair": [1.0, 0.0]}}, "non-decreasing"),
    ({"percentiles": [10, 50], "landmarks": {"dwi": [0.0, 1.0]}}, "unknown modality"),
    ({"percentiles": [10, 50], "landmarks": {"flair": [0.5, 0.5]}}, "span a range"),
    ({"percentiles": [10, 50], "landmarks": [0.0, 1.0]}, "'landmarks'"),
])
def test_a_malformed_output_standard_is_a_format_error(entry: dict, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        PipelineConfig(output_standard=entry).validate()


def test_a_folder_with_standardised_outputs_needs_a_version_that_reads_them(tmp_path: Path) -> None:
    """Written as format version 2 (older versions refuse it instead of writing unstandardised outputs); a folder
    without it stays version 1, and a newer version than this one understands is refused."""
    plain = tiny_pipeline(grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0)).save_pretrained(tmp_path / "plain")
    assert json.loads((plain / "model_index.json").read_text())["_format_version"] == 1
    folder = _standardised_model(tmp_path / "std")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_format_version"] == 2 and index["output_standard"]["landmarks"]["flair"] == pytest.approx(list(TAIL))
    index["_format_version"] = PipelineConfig.FORMAT_VERSION + 1
    with pytest.raises(ModelFormatError, match="newer than this mrtranslate"):
        PipelineConfig.from_dict(index)
    assert model_fingerprint(folder) != model_fingerprint(plain)


# -- the translator -----------------------------------------------------------------------------------------------


def test_standardised_targets_are_the_plain_outputs_through_their_map_on_the_input_grid(tmp_path: Path,
                                                                                      oblique: Path) -> None:
    std = Translator.from_pretrained(_standardised_model(tmp_path / "std"), progress=False, samples=3)(oblique)
    plain = Translator.from_pretrained(
        tiny_pipeline(grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0)).save_pretrained(tmp_path / "plain"),
        progress=False, samples=3)(oblique)
    out, ref = std.to("t2", "flair"), plain.to("t2", "flair")
    np.testing.assert_array_equal(arr(out["t2"]), arr(ref["t2"]))  # not standardised: unchanged
    raw, new = arr(ref["flair"]), arr(out["flair"])
    brain = raw > 0
    assert_same_geometry(out["flair"], nib.load(str(oblique)))
    np.testing.assert_array_equal(new[~brain], 0)  # background stays 0
    np.testing.assert_allclose(new[brain], standardise(raw[brain], PERCENTILES, TAIL), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.percentile(new[brain], [10, 50, 90]),
                               TAIL[[PERCENTILES.index(p) for p in (10, 50, 90)]], atol=0.02)
    assert std.run_record(["t2", "flair"])["output_standard"] == ["flair"]
    assert "output_standard" not in plain.run_record(["t2", "flair"])


def test_the_sd_map_of_a_standardised_target_is_the_spread_of_its_samples_through_the_outputs_map(
        tmp_path: Path, oblique: Path) -> None:
    bound = Translator.from_pretrained(_standardised_model(tmp_path / "std"), progress=False, samples=3)(oblique)
    out, sd = bound.to("flair", uncertainty="samples")
    np.testing.assert_array_equal(arr(out), arr(bound.to("flair")))  # the output is the one without uncertainty
    draws = bound.translate_tensor(["flair"], bound.resolve(["flair"]), draws=True)
    mean = arr(bound._inverse(bound.pipeline.decode(draws[0].mean(0)[None])[0, 0]))
    mapping = bound.standard.map_for("flair", mean, mean > 0)
    decoded = []
    for d in draws[0]:
        a = arr(bound._inverse(bound.pipeline.decode(d[None])[0, 0]))
        a[a > 0] = mapping(a[a > 0])
        decoded.append(a)
    np.testing.assert_allclose(arr(sd), np.std(decoded, axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    assert arr(sd).max() > 0


def test_info_names_the_standardised_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _standardised_model(tmp_path / "std", targets=("t1ce", "flair"))
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_standard"] == ["flair", "t1ce"]


def test_ms_spade_only_outputs_are_standardised_too(tmp_path: Path, oblique: Path) -> None:
    """``to_spade_only`` is the same model without its diffusion stage: its outputs get the same treatment."""
    bound = Translator.from_pretrained(_standardised_model(tmp_path / "std"), progress=False)(oblique)
    new = arr(bound.to_spade_only("flair"))
    np.testing.assert_allclose(np.percentile(new[new > 0], 50), TAIL[PERCENTILES.index(50)], atol=0.02)


# -- fitting ------------------------------------------------------------------------------------------------------


def _subject(root: Path, case: str, seed: int, mods=("t1", "flair")) -> None:
    rng = np.random.default_rng(seed)
    for m in mods:
        data = np.zeros((12, 12, 12), dtype=np.float32)
        data[2:10, 2:10, 2:10] = rng.gamma(2.0 + seed, 50.0, size=(8, 8, 8))
        (root / case).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0])), str(root / case / f"{case}_{m}.nii.gz"))


def test_train_standard_writes_the_mean_landmarks_of_the_real_scans_and_remove_takes_them_out(
        tmp_path: Path, small_model: Path) -> None:
    data = tmp_path / "train"
    for i in range(3):
        _subject(data, f"case{i}", i)
    model = tmp_path / "m"
    model.mkdir()
    for p in small_model.rglob("*"):
        if p.is_file():
            (model / p.relative_to(small_model)).parent.mkdir(parents=True, exist_ok=True)
            (model / p.relative_to(small_model)).write_bytes(p.read_bytes())
    assert main(["train", "standard", "--model", str(model), "--data", str(data), "--to", "flair", "--quiet"]) == 0
    index = json.loads((model / "model_index.json").read_text())
    expected = np.mean([scan_landmarks(np.asarray(nib.load(str(data / f"case{i}" / f"case{i}_flair.nii.gz")).dataobj))
                        for i in range(3)], axis=0)
    assert list(index["output_standard"]["landmarks"]) == ["flair"]
    np.testing.assert_allclose(index["output_standard"]["landmarks"]["flair"], expected, rtol=1e-12)
    assert index["output_standard"]["percentiles"] == list(PERCENTILES)
    assert Translator.from_pretrained(model, progress=False).standard.targets == ("flair",)
    assert main(["train", "standard", "--model", str(model), "--remove", "--quiet"]) == 0
    index = json.loads((model / "model_index.json").read_text())
    assert index["output_standard"] == {} and index["_format_version"] == 1


def test_train_standard_errors_are_one_line_and_leave_the_model_untouched(tmp_path: Path, small_model: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "train"
    _subject(data, "case0", 0, mods=("t1",))
    before = (small_model / "model_index.json").read_bytes()
    for argv, message in (
        (["--data", str(data), "--to", "flair"], "has no flair scan"),
        (["--to", "flair"], "--data is needed"),
        (["--data", str(data)], "no target to standardise"),
        (["--data", str(data), "--to", "t1", "t2w", "dwi"], "dwi"),
        (["--remove", "--to", "flair"], "--remove takes no"),
    ):
        assert main(["train", "standard", "--model", str(small_model), *argv]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (small_model / "model_index.json").read_bytes() == before


def test_the_bundled_default_standardises_the_targets_its_validation_study_chose():
    """brats-2mm standardises exactly the targets that benchmarks/OUTPUT_STANDARD.json's latest brats-2mm record
    names, with that record's percentiles and training scans."""
    from conftest import ROOT

    index = json.loads((ROOT / "mrtranslate" / "bundled" / "brats-2mm" / "model_index.json").read_text())
    study = [r for r in json.loads((ROOT / "benchmarks" / "OUTPUT_STANDARD.json").read_text())
             if r["model"].startswith("brats-2mm")][-1]
    assert set(study["sets"]) >= {"validation", "validation_2mm"}
    assert sorted(index["output_standard"]["landmarks"]) == sorted(study["standardise"])
    assert index["output_standard"]["percentiles"] == study["percentiles"] == list(PERCENTILES)
    split = json.loads((ROOT / "recipes" / "brats-2mm" / "split.json").read_text())
    assert sorted(study["fit_data"]) == sorted(split["first_stage_training"])
