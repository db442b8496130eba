"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data prediction.

Reference: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (2022), eq. (9) and Algorithm 2; the configuration is that of diffusers'
``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, ``solver_order=2``,
``solver_type="midpoint"``, ``final_sigmas_type="zero"``, which the tests compare it with step by step.
Notation and timesteps: :mod:`.solver`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .solver import MultistepSolver, SolverState


@dataclasses.dataclass(frozen=True)
class DPMSolverStep:
    """One update from timestep ``timestep`` to the next noise level: ``x' = ratio x + c0 m0 + c1 m1``
    with ``m0`` this step's data prediction and ``m1`` the previous one (``c1 = 0`` at first order)."""

    index: int  # position in the kept run, 0 first
    timestep: int
    alpha: float  # alphas_cumprod at ``timestep`` (what ``DDIMScheduler.split`` reads)
    order: int
    ratio: float
    c0: float
    c1: float


class DPMSolverMultistep(MultistepSolver):
    """DPM-Solver++(2M): plans (``steps``) and the update (``step``), stateless."""

    name = "dpm++2m"

    def steps(self, steps: int, strength: float = 1.0) -> list[DPMSolverStep]:
        """Per-step coefficients in sampling order; a ``strength`` below 1 keeps the timesteps at most
        ``strength * T`` and starts a first-order run at the first of them.

        For the step from s = t_i to t = t_{i+1} (t_n: noise level zero), with h_i = lambda_t - lambda_s:
        1. first order (the first step, and the last one, into noise level zero; Lu et al. eq. 9, which is
           DDIM): x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h_i} - 1) m_i
        2. second order (Algorithm 2): r_i = h_{i-1} / h_i,
           D_i = (1 + 1 / (2 r_i)) m_i - 1 / (2 r_i) m_{i-1},
           x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h_i} - 1) D_i
        Into noise level zero (sigma_t = 0, alpha_t = 1, h = inf) step 1 gives x_t = m_i: the last data
        prediction.
        """
        ts, lv = self.levels(steps, strength)
        n = len(ts)
        plan = []
        for i, t in enumerate(ts):
            s, nxt = lv[i], lv[i + 1]
            if nxt.sigma == 0:  # into noise level zero: exp(-h) = 0
                ratio, weight = 0.0, 1.0
            else:
                h = nxt.lam - s.lam
                ratio, weight = nxt.sigma / s.sigma, -nxt.alpha * math.expm1(-h)
            order = 1 if i == 0 or i == n - 1 else 2
            if order == 1:
                c0, c1 = weight, 0.0
            else:
                r = (s.lam - lv[i - 1].lam) / (nxt.lam - s.lam)
                c0, c1 = weight * (1.0 + 0.5 / r), -weight * 0.5 / r
            plan.append(DPMSolverStep(i, t, float(self.schedule.alphas_cumprod[t]), order, ratio, c0, c1))
        return plan

    def step(
        self, step: DPMSolverStep, x: torch.Tensor, model_output: torch.Tensor, state: SolverState | None = None
    ) -> tuple[torch.Tensor, SolverState]:
        """One update of ``x`` (at ``step.timestep``) from the UNet's output there; float32 whatever the
        network's dtype. Returns the next sample and the state for the next step."""
        state = state or SolverState()
        x = x.float()
        m0 = self.data_prediction(step, x, model_output)
        out = step.ratio * x + step.c0 * m0 if step.ratio else step.c0 * m0
        if step.order == 2:
            if not state.x0s:
                raise ValueError("a second-order step needs the previous step's state")
            out = out + step.c1 * state.x0s[0]
        return out, SolverState(x0s=(m0,))
