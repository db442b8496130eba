"""The error model: tables of a model's past errors, and the expected-error maps made from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _tiny import tiny_pipeline
from _translate_utils import assert_same_geometry, oblique  # noqa: F401

from mrtranslate import Translator
from mrtranslate.cli import main
from mrtranslate.errors import ModelFormatError
from mrtranslate.evaluation.metrics import normalize
from mrtranslate.pipeline import error_model as em
from mrtranslate.pipeline.error_model import ErrorModel, fit_pair, load_error_model

SHAPE = (32, 32, 24)


def _case(rng: np.random.Generator, slope: float = 0.3):
    """(prediction, source, spread, target): the prediction's error grows with its own intensity; the source
    covers all but the first slices of the brain (as a FLAIR slab might)."""
    target = rng.uniform(0.2, 1.0, SHAPE)
    target[:, :2] = 0  # outside the brain
    pred = np.where(target > 0, target + rng.normal(0, 1, SHAPE) * slope * target, 0).clip(0, None)
    source = np.where(target > 0, rng.uniform(0.5, 1.5, SHAPE), 0)
    source[:3] = 0  # brain voxels the source does not cover
    pred[source == 0] = 0  # no prediction there, as a translation's output
    spread = np.abs(rng.normal(0, 0.05, SHAPE)) * (source > 0)
    return pred.astype(np.float32), source.astype(np.float32), spread.astype(np.float32), target.astype(np.float32)


def test_a_table_cell_is_the_mean_metric_error_of_its_voxels_where_the_source_has_signal() -> None:
    rng = np.random.default_rng(0)
    cases = [_case(rng) for _ in range(3)]
    table = fit_pair(cases)
    assert table.table.shape == (em.Q_BINS, len(table.spread_edges) + 1, len(table.source_edges) + 1)
    # directly: the features as inference computes them (over the source's foreground), the error as the
    # metrics do (normalised over the brain), pooled over the brain voxels the source covers
    qs, sps, ss, errs = [], [], [], []
    for pred, source, spread, target in cases:
        fg, brain = source > 0, target > 0
        lo, hi = np.percentile(pred[fg], (0.5, 99.5))
        q = np.clip((pred - lo) / (hi - lo), 0, 1)
        slo, shi = np.percentile(source[fg], (0.5, 99.5))
        s = np.clip((source - slo) / (shi - slo), 0, 1)
        seen = fg & brain
        qs.append(q[seen]), sps.append(spread[seen] / (hi - lo)), ss.append(s[seen])
        errs.append(np.abs(normalize(pred, brain) - normalize(target, brain))[seen])
    q, sp, s, err = (np.concatenate(a) for a in (qs, sps, ss, errs))
    assert table.n_voxels == err.size
    np.testing.assert_allclose(table.spread_edges, np.quantile(sp, em.QUARTILES), rtol=1e-6)
    qi = np.clip((q * em.Q_BINS).astype(int), 0, em.Q_BINS - 1)
    si = (sp[:, None] >= table.spread_edges[None]).sum(1)  # bin k: edge k-1 <= value < edge k
    ci = (s[:, None] >= table.source_edges[None]).sum(1)
    counts = np.zeros(table.table.shape, int)
    np.add.at(counts, (qi, si, ci), 1)
    full = np.unravel_index(np.argmax(counts), counts.shape)
    assert counts[full] >= em.MIN_VOXELS
    cell = (qi == full[0]) & (si == full[1]) & (ci == full[2])
    assert table.table[full] == pytest.approx(err[cell].mean(), rel=1e-6)
    # a cell with too few voxels takes its q bin's mean over all cells
    sparse = np.argwhere((counts > 0) & (counts < em.MIN_VOXELS))
    assert len(sparse)
    i, j, k = sparse[0]
    assert table.table[i, j, k] == pytest.approx(err[qi == i].mean(), rel=1e-6)


def test_the_map_ranks_voxels_by_error_is_in_output_units_and_zero_outside_the_input() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    model = ErrorModel({"t1->t2": fit_pair([_case(rng) for _ in range(3)])})
    pred, source, spread, target = _case(rng)  # a new case
    sd = model.predict("t1", "t2", pred, source, spread)
    assert sd.dtype == np.float32 and sd.shape == pred.shape
    assert (sd[source == 0] == 0).all() and (sd[source > 0] > 0).all()
    seen = (source > 0) & (target > 0)
    err = np.abs(normalize(pred, target > 0) - normalize(target, target > 0))[seen]
    # the error grows with intensity, and so does the map; the spread here is noise, and ranks nothing
    assert spearmanr(sd[seen], err)[0] > 0.15 and abs(spearmanr(spread[seen], err)[0]) < 0.05
    # the output's units: a prediction twice as bright (same spread relative to it) has a map twice as large
    np.testing.assert_allclose(model.predict("t1", "t2", 2 * pred, source, 2 * spread), 2 * sd, rtol=1e-5)
    # the SD of a normal error whose mean |error| the table holds, times the output's percentile range
    fg = source > 0
    lo, hi = np.percentile(pred[fg], (0.5, 99.5))
    assert sd[fg].mean() / (hi - lo) == pytest.approx(
        math.sqrt(math.pi / 2) * np.mean(model.pairs["t1->t2"].cells(
            np.clip((pred[fg] - lo) / (hi - lo), 0, 1), spread[fg] / (hi - lo),
            np.clip((source[fg] - np.percentile(source[fg], 0.5)) / np.ptp(np.percentile(source[fg], (0.5, 99.5))), 0, 1))),
        rel=1e-5)


def test_a_pair_whose_samples_agree_is_tabled_by_intensities_alone() -> None:
    rng = np.random.default_rng(2)
    cases = [(p, s, np.zeros_like(sp), t) for p, s, sp, t in (_case(rng) for _ in range(2))]
    table = fit_pair(cases)
    assert table.spread_edges.size == 0 and table.table.shape[1] == 1
    model = ErrorModel({"t1->t1ce": table})
    pred, source, spread, _ = _case(rng)
    np.testing.assert_array_equal(model.predict("t1", "t1ce", pred, source, spread),
                                  model.predict("t1", "t1ce", pred, source, np.zeros_like(spread)))


def test_the_error_model_round_trips_through_its_file_and_a_broken_file_is_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model = ErrorModel({"t1->t2": fit_pair([_case(rng)])}, fitted_on=["a"])
    assert load_error_model(tmp_path) is None
    model.save(tmp_path)
    again = load_error_model(tmp_path)
    pred, source, spread, _ = _case(rng)
    np.testing.assert_allclose(again.predict("t1", "t2", pred, source, spread),
                               model.predict("t1", "t2", pred, source, spread), rtol=1e-5)
    assert again.fitted_on == ["a"] and again.covers("t1", "t2") and not again.covers("t2", "t1")
    data = json.loads((tmp_path / em.FILE_NAME).read_text())
    data["pairs"]["t1->t2"]["table"] = data["pairs"]["t1->t2"]["table"][:-1]
    (tmp_path / em.FILE_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="must hold") as exc:
        load_error_model(tmp_path)
    assert "\n" not in str(exc.value)
    (tmp_path / em.FILE_NAME).write_text('{"format": "something else"}')
    with pytest.raises(ModelFormatError, match="not an mrtranslate error table"):
        load_error_model(tmp_path)


@pytest.fixture()
def calibrated(tmp_path: Path, oblique: Path) -> tuple[Path, Path]:
    """A tiny model folder with an error model for t1->t2 only, and an input head (LPS, oblique)."""
    pipe = tiny_pipeline(grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0))
    pipe.config.default_steps, pipe.config.default_eta, pipe.config.default_samples = 2, 1.0, 3
    pipe.config.validate()
    folder = pipe.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(4)
    ErrorModel({"t1->t2": fit_pair([_case(rng) for _ in range(2)])}).save(folder)
    return folder, oblique


def test_uncertainty_maps_with_the_error_model_where_it_covers_the_pair(calibrated) -> None:
    folder, inp = calibrated
    bound = Translator.from_pretrained(folder, progress=False)(inp)
    out, sd = bound.to("t2", "flair", uncertainty=True)
    plain, spread = bound.to("t2", "flair", uncertainty="samples")
    src = np.asarray(nib.load(str(inp)).dataobj, dtype=np.float32)
    for t in ("t2", "flair"):
        np.testing.assert_array_equal(np.asarray(out[t].dataobj), np.asarray(plain[t].dataobj))
        assert_same_geometry(sd[t], nib.load(str(inp)))
    # t2: the error model's map of this very output; flair (not covered): the samples' spread
    expected = bound.error_model.predict("t1", "t2", np.asarray(out["t2"].dataobj, dtype=np.float32), src,
                                         np.asarray(spread["t2"].dataobj, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(sd["t2"].dataobj), expected, rtol=1e-6)
    assert not np.allclose(np.asarray(sd["t2"].dataobj), np.asarray(spread["t2"].dataobj))
    np.testing.assert_array_equal(np.asarray(sd["flair"].dataobj), np.asarray(spread["flair"].dataobj))
    record = bound.run_record(["t2", "flair"], uncertainty=True)
    assert record["uncertainty_kind"] == {"t2": "calibrated", "flair": "samples"}
    assert "expected error" in record["uncertainty"]
    assert bound.run_record(["t2"], uncertainty="samples")["uncertainty_kind"] == {"t2": "samples"}
    with pytest.raises(Exception, match="use True, 'calibrated' or 'samples'"):
        bound.to("t2", uncertainty="maybe")


def test_cli_sample_spread_writes_the_spread_and_needs_uncertainty(calibrated, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    folder, inp = calibrated
    assert main([str(inp), "--to", "t2", "--model", str(folder), "--sample-spread", "--quiet"]) == 2
    assert "add --uncertainty" in capsys.readouterr().err
    for flags, kind in ((["--uncertainty"], "calibrated"), (["--uncertainty", "--sample-spread"], "samples")):
        out = tmp_path / kind
        assert main([str(inp), "--to", "t2", "--model", str(folder), "--quiet", "--out-dir", str(out), *flags]) == 0
        record = json.loads((out / "sub-01_T1w_t2.json").read_text())
        assert record["uncertainty_kind"] == kind and Path(record["sd_file"]).is_file()
    a = np.asarray(nib.load(str(tmp_path / "calibrated" / "sub-01_T1w_t2_sd.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "samples" / "sub-01_T1w_t2_sd.nii.gz")).dataobj)
    assert not np.allclose(a, b)


def test_the_bundled_model_maps_the_pairs_its_validation_chose_with_its_error_model() -> None:
    """brats-2mm's error model: every pair scored on both validation sets, a table kept exactly where it beat
    the samples' spread (and 0) on both; the pairs it did not beat keep the spread."""
    folder = Path(__file__).resolve().parents[1] / "mrtranslate" / "bundled" / "brats-2mm"
    model = load_error_model(folder)
    assert len(model.fitted_on) == 5 and len(model.validation) == 12
    for task, entry in model.validation.items():
        sets = {k: v for k, v in entry.items() if k != "kept"}
        assert set(sets) == {"validation", "validation_2mm"}
        expected = all(v["spearman_table"] > max(0.0, v["spearman_samples"] or 0.0) for v in sets.values())
        assert entry["kept"] == expected == model.covers(*task.split("->"))
    assert sorted(k for k, v in model.validation.items() if v["kept"]) == [
        "flair->t2", "t1->t2", "t1ce->t1", "t1ce->t2", "t2->flair", "t2->t1ce"]
    split = json.loads((folder.parents[2] / "recipes" / "brats-2mm" / "split.json").read_text())
    assert set(model.fitted_on) == set(split["uncertainty_fit"])
