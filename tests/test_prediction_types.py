"""The UNet's prediction target (scheduler ``prediction_type``): epsilon (published), sample (x0) and v."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _tiny import tiny_pipeline
from mrtranslate.errors import ModelFormatError
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.schedulers import DDIMScheduler
from mrtranslate.schedulers.ddim import SchedulerConfig

KINDS = ["epsilon", "sample", "v_prediction"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_training_target_splits_back_into_the_clean_latent_and_the_noise(kind):
    sched = DDIMScheduler(SchedulerConfig(prediction_type=kind))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, 5, generator=g), torch.randn(3, 4, 5, 5, 5, generator=g)
    for st in sched.steps(10, 0.0):
        t = torch.full((3,), st.timestep)
        x_t = sched.add_noise(x0, noise, t)
        got_x0, got_eps = sched.split(st, x_t, sched.training_target(x0, noise, t))
        # at t = 1 the noise is recovered from a 0.04 noise level, which scales float32 rounding by ~25
        assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, noise, atol=2e-3)


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_a_ddim_step_is_the_same_update_whatever_the_network_predicts(kind):
    eps_sched, other = DDIMScheduler(), DDIMScheduler(SchedulerConfig(prediction_type=kind))
    g = torch.Generator().manual_seed(1)
    x0, noise, z = (torch.randn(2, 4, 6, 6, 6, generator=g) for _ in range(3))
    st = eps_sched.steps(20, 1.0)[5]
    t = torch.full((2,), st.timestep)
    x_t = eps_sched.add_noise(x0, noise, t)
    expected = eps_sched.step(st, x_t, noise, z)
    got = other.step(st, x_t, other.training_target(x0, noise, t), z)
    assert torch.allclose(got, expected, atol=1e-4)


def test_the_prediction_type_travels_with_the_model_folder_and_drives_sampling(tmp_path: Path):
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    x_T = torch.randn(1, 4, 16, 16, 16)
    eps_out = pipe.sample(z, [1], steps=3, eta=0.0, x_T=x_T, progress=False)
    pipe.scheduler = DDIMScheduler(SchedulerConfig(prediction_type="sample"))
    pipe.save_pretrained(tmp_path / "m")
    loaded = ALDMPipeline.from_pretrained(tmp_path / "m")
    assert loaded.scheduler.config.prediction_type == "sample"
    x0_out = loaded.sample(z, [1], steps=3, eta=0.0, x_T=x_T, progress=False)
    assert not torch.allclose(x0_out, eps_out)  # the same network output read as x0, not as noise


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ModelFormatError, match="prediction_type 'x0'"):
        SchedulerConfig(prediction_type="x0").validate()


def _residual_pipeline() -> ALDMPipeline:
    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler(SchedulerConfig(prediction_type="residual"))
    return pipe


def test_a_residual_unet_with_zero_output_samples_exactly_the_ms_spade_latent():
    pipe = _residual_pipeline()
    with torch.no_grad():  # a new UNet: the output layers are zero-initialised, so the correction is 0
        for p in pipe.unet.out.parameters():
            p.zero_()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    x_T = torch.randn(2, 4, 16, 16, 16)
    spade = pipe.target_like(z, [1, 3])
    out = pipe.sample(z, [1, 3], steps=4, eta=0.0, x_T=x_T, progress=False)
    # DDIM (eta 0) with a constant x0 keeps the first step's noise estimate: x = sqrt(a) x0 + sqrt(1 - a) eps,
    # down to the last step's a_prev; that is MS-SPADE's latent up to the schedule's smallest noise level
    plan = pipe.scheduler.steps(4, 0.0)
    a_first, a_last = (torch.tensor(v, dtype=torch.float32) for v in (plan[0].alpha, plan[-1].alpha_prev))
    eps = (x_T - a_first.sqrt() * spade) / (1 - a_first).sqrt()
    assert torch.allclose(out, a_last.sqrt() * spade + (1 - a_last).sqrt() * eps, atol=1e-4)
    for solver in ("dpm++2m", "unipc"):  # the multistep solvers read the same x0 prediction
        multi = pipe.sample(z, [1, 3], steps=4, x_T=x_T, solver=solver, progress=False)
        assert (multi - spade).abs().max() < 0.1


def test_a_residual_unet_adds_its_output_to_the_ms_spade_latent_and_travels_with_the_folder(tmp_path: Path):
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    x_T = torch.randn(1, 4, 16, 16, 16)
    pipe.scheduler = DDIMScheduler(SchedulerConfig(prediction_type="sample"))
    as_x0 = pipe.sample(z, [2], steps=1, eta=0.0, x_T=x_T, progress=False)
    pipe.scheduler = DDIMScheduler(SchedulerConfig(prediction_type="residual"))
    pipe.save_pretrained(tmp_path / "m")
    loaded = ALDMPipeline.from_pretrained(tmp_path / "m")
    assert loaded.scheduler.config.prediction_type == "residual"
    residual = loaded.sample(z, [2], steps=1, eta=0.0, x_T=x_T, progress=False)
    # one DDIM step to a_prev = acp[0]: the two differ by sqrt(acp[0]) times MS-SPADE's latent
    a_prev = torch.tensor(pipe.scheduler.steps(1, 0.0)[0].alpha_prev, dtype=torch.float32)
    a = torch.tensor(pipe.scheduler.steps(1, 0.0)[0].alpha, dtype=torch.float32)
    spade = pipe.target_like(z, [2])
    gain = a_prev.sqrt() - (1 - a_prev).sqrt() * a.sqrt() / (1 - a).sqrt()
    assert torch.allclose(residual - as_x0, gain * spade, atol=1e-4)


def test_the_residual_training_target_is_the_clean_latent_minus_ms_spade():
    sched = DDIMScheduler(SchedulerConfig(prediction_type="residual"))
    x0, spade = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    assert torch.equal(sched.residual_target(x0, spade), x0 - spade)
    with pytest.raises(ValueError, match="residual_target"):
        sched.training_target(x0, spade, torch.zeros(2, dtype=torch.long))
