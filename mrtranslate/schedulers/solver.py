"""What the multistep ODE solvers share: their timestep spacing, the noise levels in log-SNR, their state.

The solvers (DPM-Solver++ in :mod:`.dpm_solver`, UniPC in :mod:`.unipc`) sample the probability-flow ODE of
the same 1000-step DDPM schedule that DDIM uses (``DDIMScheduler.alphas_cumprod``), in its data-prediction
form: at each timestep the UNet's output is turned into the clean latent x0 by ``DDIMScheduler.split``, so
they work for every ``prediction_type``.

Notation (Lu et al. 2022, "DPM-Solver++", section 2): ``alpha_t = sqrt(acp_t)``, ``sigma_t = sqrt(1 - acp_t)``,
``lambda_t = log(alpha_t / sigma_t)`` (half the log-SNR, increasing as noise decreases), and for a step from
``s`` to ``t``, ``h = lambda_t - lambda_s``.

Timesteps: ``S`` steps spaced as diffusers' ``timestep_spacing`` (default "linspace": ``round(linspace(0,
T - 1, S + 1))`` from the top, the last value 0 dropped, so S = 10 gives 999, 899, ..., 100). The solver
evaluates the UNet at each of them; its last update goes to noise level zero (``alpha = 1, sigma = 0``)
and returns the last data prediction, as diffusers' ``final_sigmas_type="zero"``.

Plans are stateless lists of frozen per-step coefficients, like ``DDIMScheduler.steps``; the only state
of a multistep run, the previous data predictions, travels through ``SolverState`` in the sampling loop.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..errors import UsageError
from .ddim import DDIMScheduler, is_strength

#: Solver names, as ``SamplingOptions.solver``, ``--solver`` and ``default_solver`` take them.
SOLVERS: tuple[str, ...] = ("ddim", "dpm++2m", "unipc")
#: How each is named in a sentence ("200 DDIM steps").
SOLVER_LABELS: dict[str, str] = {"ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)", "unipc": "UniPC"}
SPACINGS: tuple[str, ...] = ("linspace", "trailing", "leading")


def check_solver(name: Any, what: str = "solver") -> str:
    """``name`` when it is a known solver, else UsageError naming ``what``."""
    if not isinstance(name, str) or name not in SOLVERS:
        raise UsageError(f"{what} = {name!r}: use one of {', '.join(SOLVERS)}")
    return name


def spaced_timesteps(T: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Descending timesteps for ``steps`` solver steps over a ``T``-step schedule, as diffusers spaces them.

    linspace: round(linspace(0, T - 1, S + 1))[::-1][:-1]; trailing: round(arange(T, 0, -T / S)) - 1;
    leading: arange(S + 1)[::-1][:-1] * (T // (S + 1)) (diffusers' ``steps_offset`` 0).
    """
    limit = T // 2
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        raise UsageError(f"steps = {steps!r}: use an integer from 1 to {limit}")
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "trailing":
        ts = torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1
    elif spacing == "leading":
        ts = (torch.arange(steps + 1, dtype=torch.float64) * (T // (steps + 1))).round().flip(0)[:-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r} ({', '.join(SPACINGS)})")
    # round() of torch and NumPy both round halves to even, so these are diffusers' integers
    return [int(t) for t in ts.tolist()]


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
    """``alpha_t``, ``sigma_t`` and ``lambda_t`` of one timestep, in float64 from the float32 schedule."""

    alpha: float
    sigma: float

    @property
    def lam(self) -> float:
        return math.log(self.alpha) - math.log(self.sigma) if self.sigma > 0 else math.inf

    @classmethod
    def at(cls, alphas_cumprod: torch.Tensor, t: int) -> NoiseLevel:
        acp = float(alphas_cumprod[t])
        return cls(math.sqrt(acp), math.sqrt(1.0 - acp))


#: The end of every solver run: no noise left (diffusers' ``final_sigmas_type="zero"``).
CLEAN = NoiseLevel(1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class SolverState:
    """What a multistep solver carries from one step to the next.

    ``x0s``: the data predictions of the steps so far, newest first (at most the solver's order);
    ``sample``: the sample the last step started from (UniPC's corrector revisits it).
    """

    x0s: tuple[torch.Tensor, ...] = ()
    sample: torch.Tensor | None = None


def kept(timesteps: list[int], strength: float, T: int, steps: int) -> list[int]:
    """The timesteps a sampling strength keeps: those at most ``strength * T`` (all for strength 1), the same
    rule as ``DDIMScheduler.steps``; the kept run starts from the first of them."""
    if not is_strength(strength, zero=False):
        raise UsageError(f"strength = {strength!r}: a solver takes a number in (0, 1] (1: from pure noise, "
                         "as published; strength 0 runs no step, only the pipeline takes it)")
    if float(strength) >= 1.0:
        return timesteps
    limit = float(strength) * T
    out = [t for t in timesteps if t <= limit]
    if not out:
        raise UsageError(
            f"strength {strength} with {steps} steps leaves no solver step (the smallest timestep is "
            f"{timesteps[-1]} of {T}): raise the strength or the steps"
        )
    return out


class MultistepSolver:
    """Base of the multistep solvers: the schedule they read, their timesteps and noise levels.

    ``schedule`` is the model's ``DDIMScheduler``: its ``alphas_cumprod`` (the published float32 buffer) and
    its ``split`` of the UNet's output into (x0, eps) for the model's prediction type.
    """

    name = ""

    def __init__(self, schedule: DDIMScheduler, spacing: str = "linspace"):
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r} ({', '.join(SPACINGS)})")
        self.schedule = schedule
        self.spacing = spacing

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.config.num_train_timesteps

    def timesteps(self, steps: int) -> list[int]:
        """Descending timesteps at which the UNet is evaluated for ``steps`` steps over the whole schedule."""
        return spaced_timesteps(self.num_train_timesteps, steps, self.spacing)

    def levels(self, steps: int, strength: float = 1.0) -> tuple[list[int], list[NoiseLevel]]:
        """The kept timesteps (see ``kept``) and their noise levels, followed by ``CLEAN``: ``len(ts) + 1``."""
        T = self.num_train_timesteps
        ts = kept(self.timesteps(steps), strength, T, steps)
        acp = self.schedule.alphas_cumprod
        return ts, [NoiseLevel.at(acp, t) for t in ts] + [CLEAN]

    def data_prediction(self, step: Any, x: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """x0 from the UNet's output at ``x`` (float32), for the model's prediction type."""
        return self.schedule.split(step, x, model_output)[0]
