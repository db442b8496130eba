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
