"""Uncertainty maps (SD across diffusion samples) and the tumour / healthy-brain region scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _tiny import tiny_pipeline
from _translate_utils import arr, assert_same_geometry, oblique, small_model, write_head  # noqa: F401

from mrtranslate import Translator
from mrtranslate.cli import main
from mrtranslate.errors import GridMismatchError, UsageError
from mrtranslate.evaluation.metrics import compute_metrics, normalize
from mrtranslate.evaluation.uncertainty import N_BINS, calibration, summarise_calibration
from mrtranslate.pipeline import aldm


# -- the SD map ---------------------------------------------------------------------------------------------------


def test_a_pair_at_strength_zero_is_ms_spades_output_with_an_sd_map_of_zero(tmp_path: Path, oblique: Path,
                                                                             caplog) -> None:
    """A model whose pair_strength keeps MS-SPADE's latent for a pair: that target equals to_spade_only, its SD
    map is 0 (with a warning saying why), and the other targets are sampled as usual."""
    pipe = tiny_pipeline(grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0))
    pipe.config.default_steps, pipe.config.default_eta = 3, 1.0
    pipe.config.pair_strength = {"t1->t2": 0.0}
    pipe.config.validate()
    assert "t1->t2: 0, MS-SPADE only" in pipe.config.sampling_summary()
    bound = Translator.from_pretrained(pipe.save_pretrained(tmp_path / "m"), progress=False, samples=3)(oblique)
    with caplog.at_level("WARNING"):
        out, sd = bound.to("t2", "flair", uncertainty=True)
    assert "t2 from t1: MS-SPADE's output" in caplog.text and "flair" not in caplog.text.split("MS-SPADE")[0]
    np.testing.assert_allclose(arr(out["t2"]), arr(bound.to_spade_only("t2")), rtol=1e-4, atol=1e-5)
    assert (arr(sd["t2"]) == 0).all() and arr(sd["flair"]).max() > 0
    assert b"SD of 3" in sd["t2"].header["descrip"].tobytes()


def test_sd_map_is_on_the_outputs_grid_and_is_the_spread_of_the_decoded_samples(small_model: Path,
                                                                                oblique: Path) -> None:
    tr = Translator.from_pretrained(small_model, progress=False, samples=3)
    bound = tr(oblique)
    out, sd = bound.to("t2", "flair", uncertainty=True)
    plain = bound.to("t2", "flair")
    ref = nib.load(str(oblique))
    for t in ("t2", "flair"):
        assert_same_geometry(out[t], ref)
        assert_same_geometry(sd[t], ref)
        # the output is the one a run without uncertainty writes
        np.testing.assert_array_equal(arr(out[t]), arr(plain[t]))
        s = arr(sd[t])
        assert (s >= 0).all() and s.max() > 0
        assert (s[arr(ref) == 0] == 0).all()  # 0 outside the input's foreground, as the output
    # the SD is that of the k samples decoded one by one and mapped back to the input grid
    draws = bound.translate_tensor(["t2"], bound.resolve(["t2"]), draws=True)
    assert draws.shape[:2] == (1, 3)
    decoded = np.stack([arr(bound._inverse(tr.pipeline.decode(d[None])[0, 0])) for d in draws[0]])
    np.testing.assert_allclose(arr(sd["t2"]), decoded.std(axis=0, ddof=1), rtol=1e-5, atol=1e-6)


def test_sd_is_zero_where_the_samples_agree(small_model: Path, oblique: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic sampling (eta 0) from one shared noise: every sample is the same, so the SD is 0 everywhere
    (up to float rounding: the samples run as rows of one batch), and the output is that of a single sample."""
    original = aldm._randn

    def same_noise_for_every_row(shape, generator):
        one = original((1, *shape[1:]), generator[0] if isinstance(generator, (list, tuple)) else generator)
        return one.expand(shape).clone()

    monkeypatch.setattr(aldm, "_randn", same_noise_for_every_row)
    bound = Translator.from_pretrained(small_model, progress=False, eta=0.0)(oblique)
    out, sd = bound.to("t2", samples=3, uncertainty=True)
    single = bound.to("t2", samples=1)
    assert arr(out).max() > 0
    assert arr(sd).max() < 1e-6  # 0 up to float32 rounding of the batched samples
    np.testing.assert_allclose(arr(out), arr(single), atol=1e-5)


def test_sample_draws_are_the_samples_whose_mean_is_sample_mean() -> None:
    pipe = tiny_pipeline(grid=(16, 16, 16))
    z = pipe.encode(torch.rand(1, 1, 16, 16, 16) * 2 - 1)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    draws = pipe.sample_draws(z, [1, 2], 3, steps=2, generator=gens(), progress=False)
    mean = pipe.sample_mean(z, [1, 2], 3, steps=2, generator=gens(), progress=False)
    assert draws.shape == (2, 3, *mean.shape[1:])
    assert torch.equal(draws.mean(1), mean)
    assert not torch.equal(draws[:, 0], draws[:, 1])


def test_uncertainty_with_one_sample_is_refused_before_sampling(small_model: Path, oblique: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bound = Translator.from_pretrained(small_model, progress=False)(oblique)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr(bound.pipeline, "sample", no_sampling)
    with pytest.raises(UsageError, match="2 or more samples"):
        bound.to("t2", uncertainty=True)  # the tiny model's default: 1 sample
    with pytest.raises(UsageError, match="2 or more samples"):
        bound.to("t2", samples=1, uncertainty=True)


def test_cli_single_sample_uncertainty_is_a_one_line_error_and_writes_nothing(small_model: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    inp = write_head(tmp_path / "in" / "sub-01_T1w.nii.gz")
    for extra in (["--samples", "1"], []):  # given, and the model's default
        code = main([str(inp), "--to", "t2", "--model", str(small_model), "--uncertainty", "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and "2 or more samples" in err and "Traceback" not in err
        assert sorted(p.name for p in inp.parent.iterdir()) == ["sub-01_T1w.nii.gz"]


def test_cli_writes_the_sd_map_beside_the_output_and_records_it(small_model: Path, tmp_path: Path) -> None:
    inp = write_head(tmp_path / "sub-01_T1w.nii.gz")
    assert main([str(inp), "--to", "t2", "--model", str(small_model), "--samples", "2", "--uncertainty",
                 "--quiet"]) == 0
    sd = tmp_path / "sub-01_T1w_t2_sd.nii.gz"
    assert_same_geometry(nib.load(str(sd)), nib.load(str(inp)))
    record = json.loads((tmp_path / "sub-01_T1w_t2.json").read_text())
    assert record["sd_file"] == str(sd) and record["samples"] == 2 and "standard deviation" in record["uncertainty"]


# -- calibration ----------------------------------------------------------------------------------------------------


def test_calibration_of_an_sd_that_is_the_error_ranks_perfectly() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 2, (12, 12, 12))
    target[:2] = 0
    err = rng.uniform(0, 0.5, target.shape)
    pred = np.where(target > 0, target + err, 0)
    brain = target > 0
    # the SD in the prediction's units: the error scaled by the width of the prediction's percentile range
    lo, hi = np.percentile(pred[brain], (0.5, 99.5))
    sd = np.abs(normalize(pred, brain) - normalize(target, brain)) * (hi - lo)
    cal = calibration(pred, target, sd, brain)
    assert cal["spearman"] == pytest.approx(1.0)
    assert len(cal["decile_error"]) == N_BINS and cal["decile_error"] == sorted(cal["decile_error"])
    assert cal["rms_ratio"] == pytest.approx(1.0)
    noise = calibration(pred, target, rng.uniform(0, 1, target.shape), brain)
    assert abs(noise["spearman"]) < 0.1
    summary = summarise_calibration([{"case": "a", "source": "t1", "target": "t2", **cal}], [("t1", "t2")])
    assert summary[0]["better_than_chance"] and summary[0]["spearman"] == pytest.approx(1.0)


# -- region scores -----------------------------------------------------------------------------------------------


@pytest.fixture()
def labelled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth 'brain' target, a prediction with a local error, and a label map with a known tumour block."""
    rng = np.random.default_rng(3)
    x, y, z = np.indices((30, 32, 28), dtype=np.float64)
    brain = ((x - 15) ** 2 / 13**2 + (y - 16) ** 2 / 14**2 + (z - 14) ** 2 / 12**2) < 1
    target = np.where(brain, 100 + 30 * np.sin(x / 4) * np.cos(y / 5) + 10 * np.cos(z / 3), 0)
    pred = np.where(brain, target + rng.normal(0, 4, target.shape), 0)
    labels = np.zeros(target.shape, dtype=np.int16)
    labels[12:18, 10:16, 11:17] = 2
    labels[14:16, 12:14, 13:15] = 4
    pred[labels > 0] += 25  # the tumour is predicted worse
    return pred, target, labels


def test_region_scores_are_those_of_the_skimage_ssim_map_and_psnr_in_each_region(labelled) -> None:
    from skimage.metrics import structural_similarity

    pred, target, labels = labelled
    brain = target > 0
    got = compute_metrics(pred, target, labels=labels)
    p, t = normalize(pred, brain), normalize(target, brain)
    _, full = structural_similarity(p, t, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    tumour = labels > 0
    healthy = brain & ~tumour
    for name, region in (("tumour", tumour), ("healthy", healthy), ("brain", brain)):
        assert got["ssim"][name] == pytest.approx(float(full[region].mean()), abs=1e-6)
        assert got["psnr"][name] == pytest.approx(10 * math.log10(1 / np.mean((p[region] - t[region]) ** 2)))
        assert got["mae"][name] == pytest.approx(float(np.mean(np.abs(p[region] - t[region]))))
    assert got["ssim"]["tumour"] < got["ssim"]["healthy"]
    assert got["psnr"]["tumour"] < got["psnr"]["healthy"]
    # without labels: the brain and volume regions only, unchanged
    plain = compute_metrics(pred, target)
    assert set(plain["ssim"]) == {"brain", "volume"}
    assert plain["ssim"]["brain"] == got["ssim"]["brain"]


def test_a_label_map_on_another_grid_is_refused_and_no_tumour_scores_nan(labelled) -> None:
    pred, target, labels = labelled
    with pytest.raises(GridMismatchError, match="label map"):
        compute_metrics(pred, target, labels=labels[:-1])
    none = compute_metrics(pred, target, labels=np.zeros_like(labels))
    assert math.isnan(none["ssim"]["tumour"]) and none["ssim"]["healthy"] == pytest.approx(none["ssim"]["brain"])


def test_compare_takes_a_label_map(labelled, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, target, labels = labelled
    paths = {}
    for name, data in (("pred", pred), ("target", target), ("seg", labels)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(paths[name]))
    assert main(["compare", str(paths["pred"]), str(paths["target"]), "--labels", str(paths["seg"]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = compute_metrics(pred.astype(np.float32), target.astype(np.float32), labels=labels)
    assert got["ssim"]["tumour"] == pytest.approx(want["ssim"]["tumour"])
    assert got["psnr"]["healthy"] == pytest.approx(want["psnr"]["healthy"])
    assert main(["compare", str(paths["pred"]), str(paths["target"]), "--labels", str(paths["seg"])]) == 0
    table = capsys.readouterr().out
    assert "tumour" in table and "healthy" in table


def test_a_pair_without_spread_is_reported_as_such_not_ranked(tmp_path: Path) -> None:
    """An SD of 0 everywhere (a pair taken from MS-SPADE alone) has no ranking: no correlation or deciles, the
    table says so, and the figure leaves it out."""
    from mrtranslate.evaluation.uncertainty import calibration_markdown, write_calibration_figure

    rng = np.random.default_rng(0)
    target = rng.random((12, 12, 12)) + 0.5
    pred = target + rng.normal(0, 0.1, target.shape)
    flat = calibration(pred, target, np.zeros_like(target), target > 0)
    assert flat["no_spread"] and math.isnan(flat["spearman"]) and flat["decile_error"] is None
    ranked = calibration(pred, target, np.abs(pred - target), target > 0)
    assert not ranked["no_spread"] and ranked["spearman"] > 0.3  # |error| of the normalised images, roughly this SD
    records = [{"case": "a", "source": "t1", "target": "t1ce", **flat}, {"case": "a", "source": "t1", "target": "t2", **ranked}]
    entries = summarise_calibration(records, [("t1", "t1ce"), ("t1", "t2")])
    assert entries[0]["no_spread"] and not entries[0]["better_than_chance"] and entries[1]["better_than_chance"]
    table = calibration_markdown(entries)
    assert "no spread" in table.splitlines()[2] and f"{ranked['spearman']:.3f}" in table.splitlines()[3]
    assert write_calibration_figure(entries[:1], tmp_path / "none.png") == "" and not (tmp_path / "none.png").exists()
    assert write_calibration_figure(entries, tmp_path / "one.png") and (tmp_path / "one.png").exists()
