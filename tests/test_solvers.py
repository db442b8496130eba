"""The multistep solvers (DPM-Solver++(2M), UniPC): their maths, and their use through the pipeline, CLI and
model folders. Step-by-step agreement with diffusers' schedulers: test_solvers_reference.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _tiny import tiny_pipeline

from mrtranslate.cli import main
from mrtranslate.errors import ModelFormatError, UsageError
from mrtranslate.pipeline import ALDMPipeline, PipelineConfig, SamplingOptions
from mrtranslate.schedulers import DDIMScheduler, SchedulerConfig, multistep_solver
from mrtranslate.schedulers.solver import spaced_timesteps

SOLVERS = ["dpm++2m", "unipc"]
KINDS = ["epsilon", "sample", "v_prediction"]


def output_for(sched: DDIMScheduler, x: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
    """What a UNet of ``sched``'s prediction type outputs at ``x = x_t`` when it believes the clean latent is x0."""
    a = sched.alphas_cumprod[t].double()
    x, x0 = x.double(), x0.double()
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    kind = sched.config.prediction_type
    out = eps if kind == "epsilon" else x0 if kind == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0
    return out.float()


@pytest.mark.parametrize("spacing, steps, expected", [
    ("linspace", 10, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]),
    ("trailing", 4, [999, 749, 499, 249]),
    ("leading", 4, [800, 600, 400, 200]),
    ("linspace", 1, [999]),
])
def test_timesteps_are_spaced_as_documented(spacing, steps, expected):
    assert spaced_timesteps(1000, steps, spacing) == expected


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strength", [1.0, 0.45])
def test_a_model_sure_of_one_clean_latent_is_followed_exactly_along_the_ode(name, kind, strength):
    """When the network always predicts the same x0 (the data is one point), the probability-flow ODE's
    solution is x_t = alpha_t x0 + sigma_t eps with eps fixed: every solver step must land on it, whatever the
    order, and the last one on x0 itself."""
    sched = DDIMScheduler(SchedulerConfig(prediction_type=kind))
    solver = multistep_solver(name, sched)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, 3, generator=g)
    plan = solver.steps(12, strength)
    acp = sched.alphas_cumprod.double()

    def on_path(t: int) -> torch.Tensor:
        return (acp[t].sqrt() * x0 + (1 - acp[t]).sqrt() * eps).float()

    x, state = on_path(plan[0].timestep), None
    for i, st in enumerate(plan):
        x, state = solver.step(st, x, output_for(sched, x, st.timestep, x0), state)
        expected = on_path(plan[i + 1].timestep) if i + 1 < len(plan) else x0
        assert torch.allclose(x, expected, atol=2e-5), (i, float((x - expected).abs().max()))


@pytest.mark.parametrize("name", SOLVERS)
def test_the_first_step_is_deterministic_ddim_between_the_same_noise_levels(name):
    """First order, both solvers reduce to DDIM with eta 0 (Lu et al. 2022, eq. 9; Zhao et al. 2023, UniP-1)."""
    sched = DDIMScheduler()
    solver = multistep_solver(name, sched)
    plan = solver.steps(10)
    s, t = plan[0].timestep, plan[1].timestep
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(1, 4, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, 4, generator=g)
    got, _ = solver.step(plan[0], x, out)
    a_s, a_t = sched.alphas_cumprod[s].double(), sched.alphas_cumprod[t].double()
    x0 = (x.double() - (1 - a_s).sqrt() * out.double()) / a_s.sqrt()
    expected = a_t.sqrt() * x0 + (1 - a_t).sqrt() * out.double()
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_second_order_coefficients_are_those_of_the_papers():
    """DPM-Solver++(2M) (Lu et al. Algorithm 2) and UniPC's UniP-2 / UniC-1 and UniC-2 (bh2) coefficients,
    written out here independently from the papers' formulas."""
    sched = DDIMScheduler()
    acp = sched.alphas_cumprod.double()
    ts = spaced_timesteps(1000, 8)
    lam = [0.5 * math.log(float(acp[t] / (1 - acp[t]))) for t in ts]
    alpha = [math.sqrt(float(acp[t])) for t in ts]
    sigma = [math.sqrt(float(1 - acp[t])) for t in ts]
    i = 3  # from t_3 to t_4, with t_2 (and t_1) behind
    h, h_prev = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
    r = h_prev / h
    w = alpha[i + 1] * (1 - math.exp(-h))
    dpm = multistep_solver("dpm++2m", sched).steps(8)[i]
    assert dpm.order == 2
    assert dpm.ratio == pytest.approx(sigma[i + 1] / sigma[i], rel=1e-12)
    assert dpm.c0 == pytest.approx(w * (1 + 1 / (2 * r)), rel=1e-12)
    assert dpm.c1 == pytest.approx(-w / (2 * r), rel=1e-12)

    uni = multistep_solver("unipc", sched).steps(8)
    # UniP-2 equals DPM-Solver++(2M) with B(h) = e^{-h} - 1 and rho = 1/2
    p = uni[i]
    assert p.predictor_order == 2 and p.p_ratio == pytest.approx(dpm.ratio, rel=1e-12)
    assert p.p_this == pytest.approx(w, rel=1e-12)
    assert p.p_b * p.p_old == pytest.approx(-w / (2 * r), rel=1e-12)  # times (m_{i-1} - m_i)
    # UniC-2 at step i, from t_{i-1} to t_i: R rho = b, b_k = k! phi_{k+1}(h) / B(h)
    hc = lam[i] - lam[i - 1]
    r1 = (lam[i - 2] - lam[i - 1]) / hc
    phi1 = (math.exp(-hc) - 1) / -hc  # phi_1(z) = (e^z - 1) / z at z = -h (data prediction)
    phi2 = (phi1 - 1) / -hc
    phi3 = (phi2 - 0.5) / -hc
    bh = math.exp(-hc) - 1
    b1, b2 = (phi2 * 1) * -hc / bh, (phi3 * 2) * -hc / bh
    rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [r1, 1.0]], dtype=torch.float64), torch.tensor([b1, b2], dtype=torch.float64))
    c = uni[i]
    assert c.corrector_order == 2
    assert c.k_new == pytest.approx(float(rho[1]), rel=1e-9)
    assert c.k_old == pytest.approx(float(rho[0]) / r1, rel=1e-9)
    assert c.k_b == pytest.approx(-alpha[i] * bh, rel=1e-12)
    assert uni[1].corrector_order == 1 and uni[1].k_new == 0.5  # after the first-order start
    assert uni[0].corrector_order == 0 and uni[-1].predictor_order == 1


# -- in the pipeline ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe() -> ALDMPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def latent(pipe: ALDMPipeline) -> torch.Tensor:
    torch.manual_seed(3)
    return pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)


@pytest.mark.parametrize("name", SOLVERS)
def test_strength_starts_each_solver_from_the_noised_spade_latent_at_the_first_kept_timestep(pipe, latent, name):
    x_T = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    targets = [1, 3]
    seen: list[tuple[int, torch.Tensor]] = []
    forward = pipe.unet.forward

    def spy(x, t, y):
        seen.append((int(t[0]), x[:, :4].clone()))
        return forward(x, t, y)

    pipe.unet.forward = spy
    try:
        full = pipe.sample(latent, targets, steps=10, x_T=x_T, progress=False, solver=name)
        assert [t for t, _ in seen] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        assert torch.equal(seen[0][1], x_T)
        seen.clear()
        got = pipe.sample(latent, targets, steps=10, x_T=x_T, progress=False, solver=name, strength=0.35)
        assert [t for t, _ in seen] == [300, 200, 100]
        a = pipe.scheduler.alphas_cumprod[300]
        spade = pipe.target_like(latent, targets)
        assert torch.allclose(seen[0][1], a.sqrt() * spade + (1 - a).sqrt() * x_T, atol=1e-6)
        assert float((got - full).norm() / full.norm()) > 1e-3
        with pytest.raises(UsageError, match="leaves no solver step"):
            pipe.sample(latent, targets, steps=10, x_T=x_T, progress=False, solver=name, strength=0.05)
    finally:
        pipe.unet.forward = forward


@pytest.mark.parametrize("name", SOLVERS)
def test_sample_means_average_the_solvers_samples(pipe, latent, name):
    x_T = torch.randn(4, 4, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    mean = pipe.sample_mean(latent, [1, 2], 2, x_T=x_T, steps=4, progress=False, solver=name, strength=0.8)
    one = [pipe.sample(latent, [t], x_T=x_T[j : j + 1], steps=4, progress=False, solver=name, strength=0.8)
           for t, j in ((1, 0), (1, 1), (2, 2), (2, 3))]
    assert torch.allclose(mean[0], (one[0][0] + one[1][0]) / 2, atol=1e-5)
    assert torch.allclose(mean[1], (one[2][0] + one[3][0]) / 2, atol=1e-5)


def test_the_solvers_sample_deterministically_and_differently_from_ddim(pipe, latent):
    x_T = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(6))
    out = {n: pipe.sample(latent, [2], steps=5, x_T=x_T, progress=False, solver=n, eta=1.0,
                          generator=torch.Generator().manual_seed(1)) for n in ("ddim", *SOLVERS)}
    for n in SOLVERS:
        again = pipe.sample(latent, [2], steps=5, x_T=x_T, progress=False, solver=n, eta=0.0)  # eta: DDIM's only
        assert torch.equal(out[n], again)
        assert torch.isfinite(out[n]).all() and not torch.allclose(out[n], out["ddim"])
    assert not torch.allclose(out["dpm++2m"], out["unipc"])


def test_an_unknown_solver_is_refused_where_it_is_named(pipe, latent):
    with pytest.raises(UsageError, match="solver = 'euler'"):
        SamplingOptions(solver="euler")
    with pytest.raises(UsageError, match="solver = 'euler'"):
        pipe.sample(latent, [1], steps=2, progress=False, solver="euler")
    with pytest.raises(ModelFormatError, match="default_solver 'euler'"):
        PipelineConfig(default_solver="euler").validate()


def test_the_models_default_solver_travels_with_its_folder_and_a_call_can_override_it(tmp_path: Path, latent):
    pipe = tiny_pipeline()
    pipe.config.default_solver = "unipc"
    pipe.config.default_steps = 4
    folder = pipe.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "model_index.json").read_text())["default_solver"] == "unipc"
    loaded = ALDMPipeline.from_pretrained(folder)
    assert loaded.config.default_solver == "unipc"
    assert "4 UniPC steps" in loaded.config.sampling_summary()
    assert loaded.resolve(None, [1]).solver == "unipc"
    assert loaded.resolve(SamplingOptions(solver="ddim"), [1]).solver == "ddim"
    x_T = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(7))
    expected = loaded.sample(latent, [1], steps=4, x_T=x_T, progress=False, solver="unipc")
    gen = torch.Generator().manual_seed(8)
    x_T_again = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(8))
    by_default = loaded.generate(latent, [1], generator=gen, progress=False)
    assert torch.equal(by_default, loaded.sample(latent, [1], steps=4, x_T=x_T_again, progress=False, solver="unipc"))
    assert not torch.equal(expected, loaded.sample(latent, [1], steps=4, x_T=x_T, progress=False, solver="ddim", eta=0.0))

    # a folder written before solvers existed samples with DDIM, as it always did
    index = json.loads((folder / "model_index.json").read_text())
    del index["default_solver"]
    (folder / "model_index.json").write_text(json.dumps(index))
    old = ALDMPipeline.from_pretrained(folder)
    assert old.config.default_solver == "ddim" and old.resolve(None, [1]).solver == "ddim"
    assert "4 DDIM steps, eta 1.0" in old.config.sampling_summary()


def test_solver_on_the_command_line_and_in_the_run_record(tmp_path: Path, capsys: pytest.CaptureFixture):
    import nibabel as nib
    import numpy as np

    folder = tiny_pipeline().save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    data = np.zeros((32, 32, 32), np.float32)
    data[6:26, 6:26, 6:26] = rng.random((20, 20, 20)) + 0.5
    inp = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), inp)
    args = ["translate", str(inp), "--to", "t2", "--model", str(folder), "--steps", "3", "-q", "--device", "cpu"]
    assert main([*args, "--solver", "unipc"]) == 0
    record = json.loads((tmp_path / "sub-01_T1w_t2.json").read_text())
    assert record["solver"] == "unipc" and record["steps"] == 3
    assert main([*args, "--solver", "heun", "--overwrite"]) == 2
    assert "solver = 'heun'" in capsys.readouterr().err
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_solver"] == "ddim"

    from mrtranslate import Translator

    tr = Translator.from_pretrained(folder, solver="dpm++2m", progress=False)
    assert tr.resolve().solver == "dpm++2m"
    assert tr.resolve(sampling=SamplingOptions(solver="unipc")).solver == "unipc"
    assert tr(inp).run_record(["t2"])["solver"] == "dpm++2m"


def test_evaluate_names_the_solver_and_reuses_only_predictions_of_the_same_one(tmp_path: Path):
    pytest.importorskip("nilearn")  # the phantom simulator needs the train extra
    import csv

    from _tiny import save_tiny

    from mrtranslate.evaluation.evaluate import evaluate
    from mrtranslate.phantom.simulator import write_dataset

    write_dataset(tmp_path / "data", 1, seed=11, spacing=8.0, progress=False)
    model = save_tiny(tmp_path / "model", grid=(24, 28, 24), spacing=(8.0,) * 3)
    out = tmp_path / "report"

    def run(solver: str | None) -> list[str]:
        evaluate(tmp_path / "data", model, "t1", ["t2"], ["aldm"], out, cases=1, progress=False, figures=False,
                 sampling=SamplingOptions(steps=3, solver=solver))
        with (out / "cases.csv").open(newline="", encoding="utf-8") as fh:
            return [r["reused"] for r in csv.DictReader(fh)]

    assert run(None) == ["0"]
    assert "3 DDIM steps, eta 1.0" in (out / "summary.md").read_text(encoding="utf-8")
    assert run("unipc") == ["0"]  # DDIM's prediction is not reused for UniPC
    assert "3 UniPC steps" in (out / "summary.md").read_text(encoding="utf-8")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["settings"]["solver"] == "unipc"
    assert run("unipc") == ["1"]
    assert run("ddim") == ["0"]


def test_the_bundled_default_samples_as_its_choice_on_validation_subjects_found():
    """brats-2mm's default samples x steps is the highest-SSIM setting of the equal-cost settings its
    validation study compared (benchmarks/SAMPLING_DEFAULTS.json), with the study's solver."""
    from conftest import ROOT

    index = json.loads((ROOT / "mrtranslate" / "bundled" / "brats-2mm" / "model_index.json").read_text())
    study = [r for r in json.loads((ROOT / "benchmarks" / "SAMPLING_DEFAULTS.json").read_text())
             if r["model"].startswith("brats-2mm") and r["data"] == "validation_2mm"][-1]
    rows = study["rows"]
    assert len(rows) >= 2 and len({r["unet_evaluations_per_target"] for r in rows}) == 1  # equal cost
    best = max(rows, key=lambda r: r["ssim"])
    assert (index["default_samples"], index["default_steps"]) == (best["samples"], best["steps"])
    assert {r["solver"] for r in rows} == {index["default_solver"]}
    assert all(r["pairs"] == 12 for r in rows)
