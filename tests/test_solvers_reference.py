"""DPM-Solver++(2M) and UniPC against diffusers' schedulers, step by step.

Both are configured with the published betas (scaled_linear, 0.0015 .. 0.0195, 1000 steps), the same
prediction type and timestep spacing, and fed the same model outputs; every intermediate sample must agree
to float32 rounding (the schedules differ only in that diffusers cumulates float32 betas, we float64 ones).
diffusers is a test dependency (the ``test`` extra): missing, these tests fail in CI and are skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from conftest import IN_CI

from mrtranslate.schedulers import DDIMScheduler, SchedulerConfig, multistep_solver

try:
    import diffusers
except ImportError:  # pragma: no cover - depends on the environment
    diffusers = None
    if IN_CI:
        raise
    pytest.skip("diffusers is not installed (pip install -e '.[test]')", allow_module_level=True)

# diffusers' own NumPy 2 deprecation notice when it builds its sigmas
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

REFERENCE = {"dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
#: float32 rounding, relative to the largest value of the run (x0 from eps is ~15x the sample at t = 999)
RTOL = 1e-5


def reference(name: str, kind: str, spacing: str):
    cls = getattr(diffusers, REFERENCE[name])
    return cls(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
               prediction_type=kind, solver_order=2, timestep_spacing=spacing)


def fake_unet(x: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for the UNet: depends on the sample and the timestep."""
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
    return torch.tanh(0.7 * x + 0.3 * w) * (1 + t / 1000)


def run_both(name: str, kind: str, steps: int, spacing: str = "linspace", strength: float = 1.0) -> list[float]:
    """Both solvers from the same start; per step, max |ours - diffusers| / max(1, max |diffusers|)."""
    ours = multistep_solver(name, DDIMScheduler(SchedulerConfig(prediction_type=kind)), spacing)
    ref = reference(name, kind, spacing)
    ref.set_timesteps(steps)
    plan = ours.steps(steps, strength)
    ref_ts = ref.timesteps.tolist()
    begin = len(ref_ts) - len(plan)  # a strength keeps the last timesteps, as diffusers' img2img does
    assert [st.timestep for st in plan] == ref_ts[begin:]
    ref.set_begin_index(begin)
    a = b = torch.randn(2, 4, 5, 6, 5, generator=torch.Generator().manual_seed(steps))
    state, errors = None, []
    for st in plan:
        a, state = ours.step(st, a, fake_unet(a, st.timestep), state)
        b = ref.step(fake_unet(b, st.timestep), st.timestep, b).prev_sample
        errors.append(float((a - b).abs().max()) / max(1.0, float(b.abs().max())))
    return errors


@pytest.mark.parametrize("name", ["dpm++2m", "unipc"])
@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25])
def test_every_step_equals_diffusers(name, kind, steps):
    errors = run_both(name, kind, steps)
    assert len(errors) == steps and max(errors) < RTOL, errors


@pytest.mark.parametrize("name", ["dpm++2m", "unipc"])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_every_step_equals_diffusers_with_its_other_spacings(name, spacing):
    assert max(run_both(name, "epsilon", 12, spacing)) < RTOL


@pytest.mark.parametrize("name", ["dpm++2m", "unipc"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_a_strength_run_equals_diffusers_started_part_way(name, kind):
    """strength 0.45 of 20 steps keeps the 9 timesteps <= 450: diffusers started there (``set_begin_index``,
    as its img2img pipelines do) takes the same first-order start and the same steps after it."""
    errors = run_both(name, kind, 20, strength=0.45)
    assert len(errors) == 9 and max(errors) < RTOL, errors


def test_the_comparison_can_tell_the_solvers_apart():
    """The tolerance is tight enough that DPM-Solver++(2M) does not pass for UniPC (they share the predictor
    and differ by the corrector)."""
    ours = multistep_solver("dpm++2m", DDIMScheduler())
    ref = reference("unipc", "epsilon", "linspace")
    ref.set_timesteps(10)
    a = b = torch.randn(1, 4, 5, 6, 5, generator=torch.Generator().manual_seed(0))
    state = None
    for st in ours.steps(10):
        a, state = ours.step(st, a, fake_unet(a, st.timestep), state)
        b = ref.step(fake_unet(b, st.timestep), st.timestep, b).prev_sample
    assert float((a - b).abs().max()) / float(b.abs().max()) > 100 * RTOL
