"""UniPC: the unified predictor-corrector solver (UniP-2 with the UniC corrector, B(h) = e^h - 1, "bh2").

Reference: Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (NeurIPS 2023), Algorithms 1-3 in data prediction (their eq. 7 and 8 for the predictor
and corrector of order p, with B(h) = e^{h} - 1 of their section 3.2); the configuration is that of
diffusers' ``UniPCMultistepScheduler`` with ``predict_x0=True``, ``solver_type="bh2"``, ``solver_order=2``,
``lower_order_final=True``, ``final_sigmas_type="zero"``, which the tests compare it with step by step.
Notation and timesteps: :mod:`.solver`.

The corrector costs no extra UNet evaluation: at the start of step i it revisits the previous update with
the data prediction at the point that update reached (``m_i``), and the predictor then continues from the
corrected sample; ``m_i`` itself is kept as evaluated.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .solver import CLEAN, MultistepSolver, NoiseLevel, SolverState


@dataclasses.dataclass(frozen=True)
class UniPCStep:
    """Coefficients of one UniPC step at timestep ``timestep``.

    Corrector (none at the first step): ``x = k_ratio x_prev + k_prev m_{i-1} + k_b (k_old (m_{i-2} - m_{i-1})
    + k_new (m_i - m_{i-1}))`` with ``x_prev`` the sample the previous step started from.
    Predictor: ``x' = p_ratio x + p_this m_i + p_b p_old (m_{i-1} - m_i)``.
    """

    index: int
    timestep: int
    alpha: float  # alphas_cumprod at ``timestep`` (what ``DDIMScheduler.split`` reads)
    corrector_order: int  # 0: none
    k_ratio: float
    k_prev: float
    k_b: float
    k_old: float
    k_new: float
    predictor_order: int
    p_ratio: float
    p_this: float
    p_b: float
    p_old: float


def _b_coefficients(h: float, order: int) -> list[float]:
    """b_k = k! phi_{k+1}(-h) / B(-h) for k = 1..order (UniPC's eq. for the right-hand side of R rho = b,
    data prediction, B(h) = e^h - 1), computed by the recursion
    h phi_1 = e^{-h} - 1, phi_{k+1} = phi_k / (-h) - 1 / (k + 1)!, exactly as diffusers evaluates it."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return b


class UniPCMultistep(MultistepSolver):
    """UniPC (bh2, order 2): plans (``steps``) and the update (``step``), stateless."""

    name = "unipc"

    def steps(self, steps: int, strength: float = 1.0) -> list[UniPCStep]:
        """Per-step coefficients in sampling order; a ``strength`` below 1 keeps the timesteps at most
        ``strength * T`` and starts a first-order run at the first of them.

        Step i, at s = t_i (noise levels l_i; l_n: zero), with m_i the data prediction at the sample x_i:
        1. UniC (i >= 1), order p = the previous predictor's, from u = t_{i-1} to s, h = lambda_s - lambda_u:
           x_i <- (sigma_s / sigma_u) x_{i-1} - alpha_s (e^{-h} - 1) m_{i-1}
                  - alpha_s B(h) (sum_k rho_k D_k + rho_p (m_i - m_{i-1}))
           with D_1 = (m_{i-2} - m_{i-1}) / r_1, r_1 = (lambda_{i-2} - lambda_u) / h (order 2 only), rho the
           solution of R rho = b (R = [[1, 1], [r_1, 1]]), or rho_p = 1/2 at order 1; B(h) = e^{-h} - 1.
        2. UniP, order p = min(2, i + 1, n - i) (lower order at the start and the end), from s to t = t_{i+1}:
           x_{i+1} = (sigma_t / sigma_s) x_i - alpha_t (e^{-h} - 1) m_i - alpha_t B(h) rho D_1
           with h = lambda_t - lambda_s, D_1 = (m_{i-1} - m_i) / r_1, r_1 = (lambda_{i-1} - lambda_s) / h,
           rho = 1/2 (order 2 only). Into noise level zero this is x_{i+1} = m_i.
        """
        ts, lv = self.levels(steps, strength)
        n = len(ts)
        plan = []
        previous_order = 0
        for i, t in enumerate(ts):
            k = {"corrector_order": 0, "k_ratio": 0.0, "k_prev": 0.0, "k_b": 0.0, "k_old": 0.0, "k_new": 0.0}
            if i >= 1:
                k = self._corrector(lv[i - 2] if i >= 2 else None, lv[i - 1], lv[i], previous_order)
            order = min(2, i + 1, n - i)
            p = self._predictor(lv[i - 1] if i >= 1 else None, lv[i], lv[i + 1], order)
            plan.append(UniPCStep(i, t, float(self.schedule.alphas_cumprod[t]), **k, predictor_order=order, **p))
            previous_order = order
        return plan

    @staticmethod
    def _predictor(before: NoiseLevel | None, s: NoiseLevel, t: NoiseLevel, order: int) -> dict[str, float]:
        if t is CLEAN or t.sigma == 0:  # e^{-h} - 1 = -1, sigma_t = 0, alpha_t = 1: x' = m_i (order 1 here)
            return {"p_ratio": 0.0, "p_this": 1.0, "p_b": 0.0, "p_old": 0.0}
        h = t.lam - s.lam
        phi = math.expm1(-h)
        out = {"p_ratio": t.sigma / s.sigma, "p_this": -t.alpha * phi, "p_b": -t.alpha * phi, "p_old": 0.0}
        if order == 2:
            r1 = (before.lam - s.lam) / h  # type: ignore[union-attr]
            out["p_old"] = 0.5 / r1
        return out

    @staticmethod
    def _corrector(before: NoiseLevel | None, u: NoiseLevel, s: NoiseLevel, order: int) -> dict[str, float]:
        h = s.lam - u.lam
        phi = math.expm1(-h)
        out = {"corrector_order": order, "k_ratio": s.sigma / u.sigma, "k_prev": -s.alpha * phi,
               "k_b": -s.alpha * phi, "k_old": 0.0, "k_new": 0.5}
        if order == 2:
            r1 = (before.lam - u.lam) / h  # type: ignore[union-attr]
            b1, b2 = _b_coefficients(h, 2)
            # R rho = b with R = [[1, 1], [r1, 1]]
            rho_old = (b1 - b2) / (1.0 - r1)
            rho_new = b1 - rho_old
            out.update(k_old=rho_old / r1, k_new=rho_new)
        return out

    def step(
        self, step: UniPCStep, x: torch.Tensor, model_output: torch.Tensor, state: SolverState | None = None
    ) -> tuple[torch.Tensor, SolverState]:
        """Correct ``x`` (at ``step.timestep``) with the UNet's output there, then predict the next sample;
        float32 whatever the network's dtype. Returns the next sample and the state for the next step."""
        state = state or SolverState()
        x = x.float()
        m = self.data_prediction(step, x, model_output)  # at the predictor's point, before correction
        if step.corrector_order:
            if state.sample is None or len(state.x0s) < step.corrector_order:
                raise ValueError("a corrected step needs the previous step's state")
            m1 = state.x0s[0]
            res = step.k_new * (m - m1)
            if step.corrector_order == 2:
                res = res + step.k_old * (state.x0s[1] - m1)
            x = step.k_ratio * state.sample + step.k_prev * m1 + step.k_b * res
        if step.p_ratio:
            out = step.p_ratio * x + step.p_this * m
        else:
            out = step.p_this * m
        if step.predictor_order == 2:
            out = out + step.p_b * step.p_old * (state.x0s[0] - m)
        return out, SolverState(x0s=(m, *state.x0s[:1]), sample=x)
