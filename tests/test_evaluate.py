"""`mrtranslate evaluate`: report files, figures, resumability, and the 1-D lookup-table baseline."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from _tiny import save_tiny

from mrtranslate.cli import main
from mrtranslate.errors import DatasetLayoutError, UsageError
from mrtranslate.evaluation.evaluate import evaluate, task_pairs
from mrtranslate.evaluation.figures import DPI, PANEL_INCHES, VIEWS
from mrtranslate.evaluation.lut import N_BINS, IntensityLUT, LUTFitter, fit_luts
from mrtranslate.evaluation.metrics import compute_metrics, normalize
from mrtranslate.imaging.layout import find_subjects
from mrtranslate.pipeline import SamplingOptions
from mrtranslate.translator import Translator

pytest.importorskip("nilearn")  # the phantom simulator needs the train extra
from mrtranslate.phantom.simulator import write_dataset  # noqa: E402

SPACING = 8.0  # 32^3 phantoms: the cheapest that still hold a brain-shaped head
METHODS = ("aldm", "spade", "lut")
TASKS = (("t1", "t2"), ("t1", "flair"))
EXPECTED_COLUMNS = [
    "case", "method", "source", "target",
    *(f"{m}_{r}" for m in ("psnr", "nmse", "mae", "ssim") for r in ("brain", "volume", "tumour", "healthy")),
    "seconds", "reused",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_dataset(root / "test", 2, seed=11, spacing=SPACING, progress=False)
    write_dataset(root / "train", 2, seed=12, spacing=SPACING, progress=False)
    model = save_tiny(root / "model", grid=(24, 28, 24), spacing=(SPACING,) * 3)
    return root, model


def _args(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--data", str(root / "test"), "--model", str(model), "--source", "t1", "--to", "t2", "flair",
            "--method", "aldm", "spade", "--baseline", "lut", "--fit-data", str(root / "train"),
            "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def report(setup):
    root, model = setup
    out = root / "report"
    assert main(_args(root, model, out)) == 0
    return root, model, out


def _rows(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (out / "cases.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _pred_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((out / "pred").rglob("*.nii.gz"))}


# -- the report --------------------------------------------------------------------------------------------------


def test_csv_has_one_row_per_case_task_and_method_with_the_metrics_of_the_saved_predictions(report):
    root, _, out = report
    columns, rows = _rows(out)
    assert columns == EXPECTED_COLUMNS
    cases = [s.case for s in find_subjects(root / "test")]
    keys = sorted((r["case"], r["method"], r["source"], r["target"]) for r in rows)
    assert keys == sorted((c, m, s, t) for c in cases for m in METHODS for s, t in TASKS)
    for r in rows:
        assert all(math.isfinite(float(r[c])) for c in EXPECTED_COLUMNS[4:] if not c.endswith(("tumour", "healthy")))
        assert -1.0 <= float(r["ssim_brain"]) <= 1.0 and float(r["nmse_brain"]) > 0
    # The aldm row of case 0, t1 -> flair, is what compute_metrics gives for the saved prediction and the target.
    subject = find_subjects(root / "test")[0]
    row = next(r for r in rows if r["case"] == subject.case and r["method"] == "aldm" and r["target"] == "flair")
    pred_path = out / "pred" / "aldm" / subject.case / f"{subject.case}_flair_from_t1.nii.gz"
    pred, target = nib.load(pred_path), nib.load(subject.files["flair"])
    assert pred.shape == target.shape and np.allclose(pred.affine, target.affine)
    expected = compute_metrics(pred.get_fdata(), target.get_fdata(), mask=target.get_fdata() > 0)
    assert float(row["psnr_brain"]) == pytest.approx(expected["psnr"]["brain"], rel=1e-9)
    assert float(row["ssim_volume"]) == pytest.approx(expected["ssim"]["volume"], rel=1e-9)


def test_markdown_table_has_one_row_per_task_and_method_with_mean_std_and_difference_to_lut(report):
    _, _, out = report
    _, rows = _rows(out)
    text = (out / "summary.md").read_text(encoding="utf-8")
    main_table = text.split("\n## ")[0]  # the tumour / healthy-brain table follows where subjects have label maps
    table = [line for line in main_table.splitlines() if re.match(r"\| (T1|T1ce|T2|FLAIR) → ", line)]
    assert len(table) == len(TASKS) * len(METHODS)
    labels = {"aldm": "ALDM", "spade": "MS-SPADE only", "lut": "LUT (1-D)"}
    names = {"t1": "T1", "t2": "T2", "flair": "FLAIR"}
    for (source, target), chunk in zip(TASKS, (table[:3], table[3:])):
        lut_psnr = np.mean([float(r["psnr_brain"]) for r in rows if r["target"] == target and r["method"] == "lut"])
        for method, line in zip(METHODS, chunk):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[:3] == [f"{names[source]} → {names[target]}", labels[method], "2"]
            psnr = [float(r["psnr_brain"]) for r in rows if r["target"] == target and r["method"] == method]
            assert cells[3] == f"{np.mean(psnr):.2f} ± {np.std(psnr, ddof=1):.2f}"
            assert re.fullmatch(r"\d\.\d{4} ± \d\.\d{4}", cells[4]) and re.fullmatch(r"-?\d\.\d{4} ± \d\.\d{4}", cells[5])
            if method == "lut":
                assert cells[6:] == ["", "", ""]
            else:
                assert cells[6] == f"{np.mean(psnr) - lut_psnr:+.2f}"
    assert "brain = target voxels > 0" in text


def test_summary_json_holds_statistics_settings_and_the_fitted_tables(report):
    root, _, out = report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [(e["source"], e["target"], e["method"]) for e in summary["tasks"]] == [
        (s, t, m) for s, t in TASKS for m in METHODS
    ]
    assert all(e["n"] == 2 for e in summary["tasks"])
    assert summary["settings"]["steps"] == 3 and summary["settings"]["seed"] == 0
    assert summary["settings"]["fit_cases"] == [s.case for s in find_subjects(root / "train")]
    assert sorted(summary["luts"]) == ["t1->flair", "t1->t2"]
    assert all(len(lut["values"]) == N_BINS for lut in summary["luts"].values())


def test_wins_against_the_lut_are_those_of_the_case_means_and_are_said_in_summary_md(report):
    _, _, out = report
    _, rows = _rows(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    wins = summary["vs_lut_wins"]
    assert sorted(wins) == ["aldm", "spade"]
    names = {"t1": "T1", "t2": "T2", "flair": "FLAIR"}
    text = (out / "summary.md").read_text(encoding="utf-8")
    for method, label in (("aldm", "ALDM"), ("spade", "MS-SPADE only")):
        expected: dict[str, list[str]] = {"both": [], "psnr_only": [], "ssim_only": [], "neither": []}
        for source, target in TASKS:
            def mean(m: str, col: str) -> float:
                return float(np.mean([float(r[col]) for r in rows if r["method"] == m and r["target"] == target]))
            psnr = mean(method, "psnr_brain") > mean("lut", "psnr_brain")
            ssim = mean(method, "ssim_brain") > mean("lut", "ssim_brain")
            kind = "both" if psnr and ssim else "psnr_only" if psnr else "ssim_only" if ssim else "neither"
            expected[kind].append(f"{source}->{target}")
        assert wins[method] == {"n_tasks": len(TASKS), **expected}
        line = next(x for x in text.splitlines() if x.startswith(f"- {label} beats the LUT"))
        n_psnr = len(expected["both"]) + len(expected["psnr_only"])
        n_ssim = len(expected["both"]) + len(expected["ssim_only"])
        assert line.startswith(f"- {label} beats the LUT in both PSNR and SSIM (means) on {len(expected['both'])} of "
                               f"{len(TASKS)} tasks (in PSNR on {n_psnr}, in SSIM on {n_ssim})")
        for kind, said in (("psnr_only", "better in PSNR only"), ("ssim_only", "better in SSIM only"),
                           ("neither", "neither")):
            for task in expected[kind]:
                source, target = task.split("->")
                assert f"{names[source]} → {names[target]} ({said})" in line
        assert ("; not on " in line) == (len(expected["both"]) < len(TASKS))


def test_lut_rows_are_reproduced_by_the_saved_tables_and_stay_inside_the_brain(report):
    root, _, out = report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    _, rows = _rows(out)
    lut = IntensityLUT.from_dict(summary["luts"]["t1->t2"])
    for subject in find_subjects(root / "test"):
        source = nib.load(subject.files["t1"]).get_fdata()
        target = nib.load(subject.files["t2"]).get_fdata()
        pred = lut.predict(source)
        outside = source <= 0
        assert outside.sum() > 1000 and not pred[outside].any()  # never applied outside the brain
        assert pred[~outside].min() > 0
        row = next(r for r in rows if r["case"] == subject.case and r["method"] == "lut" and r["target"] == "t2")
        assert float(row["psnr_brain"]) == pytest.approx(compute_metrics(pred, target, target > 0)["psnr"]["brain"])


def test_spade_predictions_are_the_translator_spade_only_output(report):
    root, model, out = report
    subject = find_subjects(root / "test")[1]
    bound = Translator.from_pretrained(model, progress=False)(subject.files["t1"], source="t1")
    direct = bound.to_spade_only("t2", "flair")["t2"]  # the same batch as evaluate's
    saved = nib.load(out / "pred" / "spade" / subject.case / f"{subject.case}_t2_from_t1.nii.gz")
    np.testing.assert_array_equal(saved.get_fdata(), direct.get_fdata())
    assert not saved.get_fdata()[nib.load(subject.files["t1"]).get_fdata() <= 0].any()


def test_each_figure_opens_with_three_views_of_every_column_and_no_blank_panel(report):
    _, _, out = report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    columns = ["source", "target"] + [c for m in METHODS for c in (m, f"{m} |error|")]
    for source, target in TASKS:
        path = out / "figures" / f"{source}_to_{target}.png"
        info = summary["figures"][f"{source}_to_{target}"]
        image = mpimg.imread(path)
        height, width = image.shape[:2]
        assert [width, height] == info["size"]
        assert width == round(PANEL_INCHES * DPI * len(columns))
        assert height == round((PANEL_INCHES * len(VIEWS) + 0.5) * DPI)
        assert [(p["column"], p["view"]) for p in info["panels"]] == [(c, v) for c in columns for v in VIEWS]
        for panel in info["panels"]:
            x0, y0, x1, y1 = panel["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 > 100
            pixels = image[y0:y1, x0:x1, :3]
            assert pixels.std() > 0.02, f"{path.name}: {panel['column']} {panel['view']} is blank"
            assert (pixels.max(axis=-1) > 0.2).mean() > 0.05  # a visible brain, not a few stray pixels


# -- resuming ------------------------------------------------------------------------------------------------------


def test_second_run_reuses_predictions_and_a_new_seed_recomputes_only_the_sampled_ones(report):
    root, model, out = report
    before = _pred_files(out)
    _, rows_before = _rows(out)
    assert len(before) == 2 * 2 * 2 and all(r["reused"] == "0" for r in rows_before)
    assert main(_args(root, model, out)) == 0
    assert _pred_files(out) == before
    _, rows_again = _rows(out)
    assert all(r["reused"] == ("0" if r["method"] == "lut" else "1") for r in rows_again)
    metric = [c for c in EXPECTED_COLUMNS if c.endswith(("_brain", "_volume"))]
    assert [[r[c] for c in metric] for r in rows_again] == [[r[c] for c in metric] for r in rows_before]

    assert main(_args(root, model, out, "--seed", "5", "--cases", "1")) == 0
    after = _pred_files(out)
    case = find_subjects(root / "test")[0].case
    for path, mtime in before.items():
        resampled = path.parts[-3] == "aldm" and path.parent.name == case
        assert (after[path] != mtime) == resampled, path
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["seed"] == 5 and summary["settings"]["cases"] == [case]


# -- the lookup table ------------------------------------------------------------------------------------------


def _ball(shape=(40, 40, 40), radius=17.0) -> np.ndarray:
    idx = np.indices(shape) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((idx**2).sum(axis=0)) < radius


def test_lut_recovers_an_exact_intensity_map_within_the_bin_error():
    rng = np.random.default_rng(0)
    brain = _ball()
    source = np.where(brain, rng.uniform(20.0, 220.0, brain.shape), 0.0)
    s_norm = normalize(source, brain)
    f = lambda s: 3.0 + np.sin(5.0 * s) + 2.0 * s**2  # noqa: E731  (not monotone)
    target = np.where(brain, f(s_norm), 0.0)  # the target is exactly a function of the source
    fitter = LUTFitter([("t1", "t2")])
    fitter.add({"t1": source, "t2": target})
    lut = fitter.finish()[("t1", "t2")]
    t_norm = normalize(target, brain)
    lo, hi = np.percentile(target[brain], (0.5, 99.5))
    grid = np.linspace(0.0, 1.0, 10001)
    slope = np.abs(np.gradient(f(grid), grid)).max() / (hi - lo)  # of the normalised target vs normalised source
    bound = slope * (1.0 / N_BINS) / 2  # half a bin: the farthest any intensity is from a bin centre
    error = np.abs(lut.predict(source) - t_norm)[brain]
    assert error.max() <= bound
    assert error.mean() <= bound / 10
    assert lut.counts.sum() == brain.sum() and (lut.counts > 0).all()
    assert not lut.predict(source)[~brain].any()
    assert np.ptp(t_norm[brain]) > 20 * bound  # the bound is far tighter than the target's range


def test_empty_bins_are_interpolated_between_their_filled_neighbours():
    rng = np.random.default_rng(1)
    brain = _ball()
    low = rng.uniform(0.0, 1.0, brain.shape) < 0.5
    source = np.where(brain, np.where(low, rng.uniform(10, 30, brain.shape), rng.uniform(80, 100, brain.shape)), 0.0)
    target = np.where(brain, source + 5.0, 0.0)
    fitter = LUTFitter([("t2", "flair")])
    fitter.add({"t2": source, "flair": target})
    lut = fitter.finish()[("t2", "flair")]
    empty = lut.counts == 0
    assert empty[20:40].all() and not empty[:5].any() and not empty[-5:].any()
    centres = (np.arange(N_BINS) + 0.5) / N_BINS
    np.testing.assert_allclose(lut.values[empty], np.interp(centres[empty], centres[~empty], lut.values[~empty]))
    assert lut.values[20] < lut.values[30] < lut.values[39]  # a rising ramp across the gap, no zeros
    again = IntensityLUT.from_dict(json.loads(json.dumps(lut.to_dict())))
    np.testing.assert_array_equal(again.predict(source), lut.predict(source))


def test_fit_needs_subjects_with_both_modalities(setup):
    root, _ = setup
    subject = find_subjects(root / "train")[0]
    subject.files = {"t1": subject.files["t1"]}
    with pytest.raises(DatasetLayoutError, match="t1 and t2"):
        fit_luts([subject], [("t1", "t2")])


# -- arguments ---------------------------------------------------------------------------------------------------


def test_task_pairs():
    assert len(task_pairs("all", None)) == 12 and ("flair", "t1ce") in task_pairs("all", None)
    assert task_pairs("T1w", ["t2f", "t2"]) == [("t1", "flair"), ("t1", "t2")]
    assert task_pairs("t2", None) == [("t2", "t1"), ("t2", "t1ce"), ("t2", "flair")]
    with pytest.raises(UsageError, match="source modality"):
        task_pairs("t1", ["t1", "t2"])


def test_bad_arguments_fail_before_any_work(setup, tmp_path, capsys):
    root, model = setup
    with pytest.raises(UsageError, match="--fit-data"):
        evaluate(root / "test", model, "t1", ["t2"], ["aldm"], tmp_path / "r", baseline="lut")
    with pytest.raises(UsageError, match="unknown method"):
        evaluate(root / "test", model, "t1", ["t2"], ["diffusion"], tmp_path / "r")
    with pytest.raises(UsageError, match="figure case"):
        evaluate(root / "test", model, "t1", ["t2"], ["spade"], tmp_path / "r", figure_case="nobody")
    code = main(["evaluate", "--data", str(root / "test"), "--model", str(model), "--to", "t2",
                 "--baseline", "lut", "--out", str(tmp_path / "r")])
    assert code == 2 and "--fit-data" in capsys.readouterr().err
    code = main(["evaluate", "--data", str(root / "test"), "--model", str(model), "--to", "t2",
                 "--method", "aldm", "ddpm", "--out", str(tmp_path / "r")])
    assert code == 2 and "'ddpm'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_first_stage_only_model_evaluates_spade_but_refuses_aldm(setup, tmp_path):
    root, _ = setup
    model = save_tiny(tmp_path / "first", grid=(24, 28, 24), spacing=(SPACING,) * 3, first_stage_only=True)
    with pytest.raises(UsageError, match="--method spade"):
        evaluate(root / "test", model, "t2", ["flair"], ["aldm"], tmp_path / "r", progress=False)
    summary = evaluate(root / "test", model, "t2", ["flair"], ["spade"], tmp_path / "r", cases=1, progress=False,
                       figures=False)
    assert [(e["task"], e["method"], e["n"]) for e in summary["tasks"]] == [("t2->flair", "spade", 1)]
    assert not (tmp_path / "r" / "figures").exists()


def test_a_models_pair_strength_is_used_said_and_part_of_the_reuse_key(setup, tmp_path):
    from mrtranslate.pipeline import ALDMPipeline

    root, model = setup
    pipe = ALDMPipeline.from_pretrained(model)
    pipe.config.default_steps, pipe.config.default_strength = 4, 0.6  # 0.6 runs 3 of the 4 steps, 0.3 runs 2
    pipe.config.pair_strength = {"t1->flair": 0.3}
    pairs = pipe.save_pretrained(tmp_path / "pairs")
    out = tmp_path / "r"
    run = dict(cases=1, progress=False, figures=False)
    evaluate(root / "test", pairs, "t1", ["t2", "flair"], ["aldm"], out, **run)
    assert "strength 0.6 (t1->flair: 0.3)" in (out / "summary.md").read_text(encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["pair_strength"] == {"t1->flair": 0.3}
    subject = find_subjects(root / "test")[0]
    bound = Translator(subject.files["t1"], model=pairs, source="t1", progress=False)
    saved = {t: np.asarray(nib.load(str(out / "pred" / "aldm" / subject.case / f"{subject.case}_{t}_from_t1.nii.gz"
                                         )).dataobj) for t in ("t2", "flair")}
    np.testing.assert_allclose(saved["flair"], np.asarray(bound.to("flair", strength=0.3).dataobj), rtol=0, atol=1e-5)
    np.testing.assert_allclose(saved["t2"], np.asarray(bound.to("t2", strength=0.6).dataobj), rtol=0, atol=1e-5)
    evaluate(root / "test", pairs, "t1", ["t2", "flair"], ["aldm"], out, sampling=SamplingOptions(strength=0.6), **run)  # every pair at 0.6
    _, rows = _rows(out)
    assert [r["reused"] for r in rows] == ["0", "0"]  # a different key: not the pair-strength predictions


def test_a_pair_at_strength_zero_has_no_spread_in_the_report_and_its_sd_map_is_reused(setup, tmp_path):
    """A model taking t1 -> t2 from MS-SPADE alone: evaluate --uncertainty writes its SD map of 0, reports the pair
    as having no spread (the other pair is ranked), and a second run reuses both."""
    from mrtranslate.pipeline import ALDMPipeline

    root, model = setup
    pipe = ALDMPipeline.from_pretrained(model)
    pipe.config.pair_strength = {"t1->t2": 0.0}
    pipe.config.validate()
    folder = pipe.save_pretrained(tmp_path / "m")
    out = tmp_path / "r"
    kw = dict(cases=1, progress=False, sampling=SamplingOptions(samples=2), uncertainty=True)
    first = evaluate(root / "test", folder, "t1", ["t2", "flair"], ["aldm"], out, **kw)
    sd = next((out / "pred" / "aldm").glob("*/*_t2_from_t1_sd.nii.gz"))
    assert not np.asarray(nib.load(str(sd)).dataobj).any()
    flat, ranked = first["calibration"]
    assert flat["task"] == "t1->t2" and flat["no_spread"] and not flat["better_than_chance"]
    assert ranked["task"] == "t1->flair" and not ranked["no_spread"] and len(ranked["decile_error"]) == 10
    assert "no spread" in (out / "summary.md").read_text(encoding="utf-8")
    again = evaluate(root / "test", folder, "t1", ["t2", "flair"], ["aldm"], out, **kw)
    assert [r["reused"] for r in _rows(out)[1]] == ["1", "1"]
    assert again["calibration"][1]["spearman"] == ranked["spearman"] and again["calibration"][0]["no_spread"]


def test_uncertainty_writes_sd_maps_and_reports_calibration_and_tumour_scores(setup, tmp_path):
    import shutil

    root, model = setup
    data = tmp_path / "data"
    shutil.copytree(root / "test", data)
    subject = find_subjects(data)[0]
    target_img = nib.load(subject.files["t2"])
    seg = np.zeros(target_img.shape, dtype=np.int16)  # a known tumour block in the middle of the brain
    centre = [n // 2 for n in seg.shape]
    seg[tuple(slice(c - 3, c + 3) for c in centre)] = 2
    nib.save(nib.Nifti1Image(seg, target_img.affine), str(subject.seg))
    out = tmp_path / "r"
    with pytest.raises(UsageError, match="2 or more samples"):  # the tiny model samples once by default
        evaluate(data, model, "t1", ["t2"], ["aldm"], out, progress=False, uncertainty=True)
    assert not out.exists()
    summary = evaluate(data, model, "t1", ["t2"], ["aldm"], out, cases=1, progress=False,
                       sampling=SamplingOptions(samples=2), uncertainty=True)
    pred = out / "pred" / "aldm" / subject.case / f"{subject.case}_t2_from_t1.nii.gz"
    sd = nib.load(str(pred).replace(".nii.gz", "_sd.nii.gz"))
    assert sd.shape == nib.load(str(pred)).shape and np.allclose(sd.affine, nib.load(str(pred)).affine)
    assert np.asarray(sd.dataobj).max() > 0
    (cal,) = summary["calibration"]
    assert cal["task"] == "t1->t2" and cal["n"] == 1 and len(cal["decile_error"]) == 10
    assert -1 <= cal["spearman"] <= 1
    assert (out / "figures" / "uncertainty_calibration.png").is_file()
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Uncertainty" in text and "## Tumour and healthy brain" in text
    # the tumour score is that of compute_metrics with the subject's label map
    _, rows = _rows(out)
    target = nib.load(subject.files["t2"]).get_fdata()
    labels = nib.load(subject.seg).get_fdata()
    expected = compute_metrics(nib.load(str(pred)).get_fdata(), target, mask=target > 0, labels=labels)
    assert float(rows[0]["ssim_tumour"]) == pytest.approx(expected["ssim"]["tumour"], rel=1e-9)
    assert float(rows[0]["psnr_healthy"]) == pytest.approx(expected["psnr"]["healthy"], rel=1e-9)
    assert math.isfinite(float(rows[0]["ssim_tumour"]))
    assert summary["settings"]["label_cases"] == [subject.case]
    # a second run reuses the predictions and their SD maps
    again = evaluate(data, model, "t1", ["t2"], ["aldm"], out, cases=1, progress=False,
                     sampling=SamplingOptions(samples=2), uncertainty=True)
    assert again["calibration"][0]["spearman"] == cal["spearman"]
    assert [r["reused"] for r in _rows(out)[1]] == ["1"]


def test_sampling_defaults_benchmark_reports_each_setting_as_evaluate_scores_it(setup, tmp_path):
    """benchmarks/sampling_defaults.py: one evaluate run per samples x steps setting, its 12-pair means equal to
    the means of that run's summary, the UNet evaluations per target, and the SD calibration where K >= 2."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    root, model = setup
    record = tmp_path / "defaults.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("MRTRANSLATE_TEST_THREADS", "2"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sampling_defaults.py"), "--data", str(root / "test"),
         "--model", str(model), "--name", "tiny", "--settings", "2x2", "1x3", "--cases", "1", "--uncertainty",
         "--work", str(tmp_path / "work"), "--json", str(record)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(record.read_text())[-1]["rows"]
    assert json.loads(record.read_text())[-1]["model"] == "tiny" and done.stdout.startswith("tiny on test")
    assert [(r["samples"], r["steps"], r["unet_evaluations_per_target"]) for r in rows] == [(2, 2, 4), (1, 3, 3)]
    for r in rows:
        summary = json.loads((tmp_path / "work" / f"{r['samples']}x{r['steps']}" / "summary.json").read_text())
        tasks = [t for t in summary["tasks"] if t["method"] == "aldm"]
        assert r["pairs"] == len(tasks) == 12 and summary["settings"]["samples"] == r["samples"]
        assert r["psnr"] == pytest.approx(sum(t["mean"]["psnr_brain"] for t in tasks) / 12)
        assert r["ssim"] == pytest.approx(sum(t["mean"]["ssim_brain"] for t in tasks) / 12)
    assert "spearman" in rows[0] and "spearman" not in rows[1]  # a spread needs two samples
    assert "| 2 x 2 | 4 |" in done.stdout and "| 1 x 3 | 3 |" in done.stdout


def test_pair_strength_benchmark_takes_from_ms_spade_the_targets_it_wins_in_both_metrics(setup, tmp_path):
    """benchmarks/pair_strength.py: per target, the full model's and MS-SPADE's means over the 3 pairs into it, as
    evaluate scored them; MS-SPADE alone exactly where it is at least as good in PSNR and SSIM on every set."""
    import subprocess
    import sys

    from conftest import ROOT

    root, model = setup
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(root / "test"), "--model", str(model), "--source", "all", "--method",
                 "aldm", "spade", "--cases", "1", "--steps", "2", "--out", str(out), "--quiet", "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    mean = {}
    for t in summary["tasks"]:
        mean.setdefault((t["method"], t["target"]), []).append((t["mean"]["psnr_brain"], t["mean"]["ssim_brain"]))
    expect = [tgt for tgt in ("t1", "t1ce", "t2", "flair")
              if all(np.mean([v[i] for v in mean[("spade", tgt)]]) >= np.mean([v[i] for v in mean[("aldm", tgt)]])
                     for i in (0, 1))]
    record = tmp_path / "ps.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pair_strength.py"), "--name", "tiny",
                           "--report", f"test={out}", "--json", str(record)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(record.read_text())[-1]
    assert got["model"] == "tiny" and got["ms_spade_targets"] == expect
    assert got["sets"]["test"]["targets"]["t2"]["aldm"]["psnr"] == pytest.approx(np.mean([v[0] for v in mean[("aldm", "t2")]]))
    assert f"from MS-SPADE alone: {', '.join(expect) or 'none'}" in done.stdout
    # a report made at another strength is not a comparison of the model at strength 1
    other = tmp_path / "low"
    assert main(["evaluate", "--data", str(root / "test"), "--model", str(model), "--source", "t1", "--to", "t2",
                 "--method", "aldm", "--cases", "1", "--steps", "4", "--strength", "0.5", "--out", str(other), "--quiet",
                 "--no-figures"]) == 0
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pair_strength.py"), "--name", "tiny",
                          "--report", f"test={other}", "--json", str(record)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "strength 0.5" in bad.stderr


def test_the_bundled_default_takes_from_ms_spade_the_targets_its_validation_study_chose():
    """brats-2mm's pair_strength is 0 for exactly the pairs into the targets that benchmarks/PAIR_STRENGTH.json's
    latest brats-2mm record takes from MS-SPADE alone, and its default strength 1 elsewhere."""
    from conftest import ROOT

    index = json.loads((ROOT / "mrtranslate" / "bundled" / "brats-2mm" / "model_index.json").read_text())
    study = [r for r in json.loads((ROOT / "benchmarks" / "PAIR_STRENGTH.json").read_text())
             if r["model"].startswith("brats-2mm")][-1]
    assert set(study["sets"]) >= {"validation", "validation_2mm"}
    mods = ("t1", "t1ce", "t2", "flair")
    expected = {f"{s}->{t}": 0.0 for t in study["ms_spade_targets"] for s in mods if s != t}
    assert index["pair_strength"] == expected and index["default_strength"] == 1.0


def test_train_uncertainty_fits_the_error_model_that_evaluate_then_scores_beside_the_spread(setup, tmp_path,
                                                                                             capsys):
    """`mrtranslate train uncertainty` fits the error model from an evaluate report of training subjects; a
    report of the model's test subjects made before it still reuses its predictions, and now scores the error
    model's maps beside the samples' spread."""
    from mrtranslate.pipeline import ALDMPipeline
    from mrtranslate.pipeline.error_model import load_error_model

    root, model = setup
    pipe = ALDMPipeline.from_pretrained(model)
    pipe.config.default_samples = 2
    folder = pipe.save_pretrained(tmp_path / "m")
    kw = dict(progress=False, figures=False, uncertainty=True)
    before = evaluate(root / "test", folder, "t1", ["t2", "flair"], ["aldm"], tmp_path / "test", cases=1, **kw)
    assert before["settings"]["uncertainty_map"] == "samples" and "calibration_samples" not in before
    fit = ["train", "uncertainty", "--model", str(folder), "--data", str(root / "train"), "--quiet"]
    other = evaluate(root / "train", folder, "t1", ["t2"], ["aldm"], tmp_path / "other", cases=1,
                     sampling=SamplingOptions(samples=3), **kw)
    assert other["settings"]["samples"] == 3
    assert main([*fit, "--report", str(tmp_path / "other")]) == 2  # not the defaults users get
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the model's defaults" in err
    assert load_error_model(folder) is None
    evaluate(root / "train", folder, "t1", ["t2", "flair"], ["aldm"], tmp_path / "train", **kw)
    assert main([*fit, "--report", str(tmp_path / "train")]) == 0
    fitted = load_error_model(folder)
    assert fitted.covers("t1", "t2") and fitted.covers("t1", "flair") and not fitted.covers("t2", "t1")
    assert fitted.fitted_on == [s.case for s in find_subjects(root / "train")]
    assert main([*fit, "--report", str(tmp_path / "test"), "--data", str(root / "train")]) == 2  # cases not in data
    assert "is not in" in capsys.readouterr().err
    after = evaluate(root / "test", folder, "t1", ["t2", "flair"], ["aldm"], tmp_path / "test", cases=1, **kw)
    assert [r["reused"] for r in _rows(tmp_path / "test")[1]] == ["1", "1"]  # the error model changes no prediction
    assert after["settings"]["uncertainty_map"] == "calibrated"
    assert [e["task"] for e in after["calibration"]] == [e["task"] for e in after["calibration_samples"]]
    assert {e["map"] for e in after["calibration"]} == {"calibrated"}
    assert after["calibration_samples"][0]["spearman"] == before["calibration"][0]["spearman"]
    assert sorted({r["kind"] for r in after["calibration_cases"]}) == ["calibrated", "samples"]
    text = (tmp_path / "test" / "summary.md").read_text(encoding="utf-8")
    assert "expected error (its error model)" in text and "The spread across the samples" in text
    # with validation reports: a pair keeps its table only where it ranks errors better than the spread on each
    assert main([*fit, "--report", str(tmp_path / "train"), "--validation", "test=" + str(root / "test")]) == 2
    assert "NAME=DATA=REPORT" in capsys.readouterr().err
    assert main([*fit, "--report", str(tmp_path / "train"),
                 "--validation", f"test={root / 'test'}={tmp_path / 'test'}"]) == 0
    chosen = load_error_model(folder)
    spread = {e["task"]: e["spearman"] for e in after["calibration_samples"]}
    for task, entry in chosen.validation.items():
        mine = entry["test"]
        assert mine["subjects"] == after["settings"]["cases"]
        assert mine["spearman_samples"] == pytest.approx(spread[task])  # the report's own score of the spread
        assert entry["kept"] == (mine["spearman_table"] > max(0.0, mine["spearman_samples"]))
        assert chosen.covers(*task.split("->")) == entry["kept"]
    # the report scores, per task, the map a user gets: the spread where the error model keeps none
    last = evaluate(root / "test", folder, "t1", ["t2", "flair"], ["aldm"], tmp_path / "test", cases=1, **kw)
    for e, raw in zip(last["calibration"], last["calibration_samples"]):
        assert e["map"] == ("calibrated" if chosen.covers(e["source"], e["target"]) else "samples")
        if e["map"] == "samples":
            assert e["spearman"] == raw["spearman"]
