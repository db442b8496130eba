"""The DDPM noise schedule of ALDM and DDIM sampling with the published timestep spacing.

References: Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM, eq. 12 and 16), and the LDM code that ALDM
builds on, whose spacing and float32 rounding we reproduce so that a user's checkpoint samples the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ..errors import ModelFormatError, UsageError
from ..models.config import ModelConfig, check_int


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "residual")


@dataclasses.dataclass
class SchedulerConfig(ModelConfig):
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"  # betas = linspace(sqrt(start), sqrt(end), T) ** 2
    # What the UNet predicts: "epsilon" (the noise, as published), "sample" (the clean latent x0) or
    # "v_prediction" (v = sqrt(a) eps - sqrt(1 - a) x0, Salimans & Ho 2022); the names are diffusers'.
    # "residual" (not published): the clean latent minus MS-SPADE's target-like latent, a correction that the
    # pipeline adds back (x0 = spade(z_src, target) + UNet output); with zero-initialised output layers a new
    # UNet then samples exactly MS-SPADE's latent, and training can only refine it.
    prediction_type: str = "epsilon"
    timestep_spacing: str = "ldm"  # c = T // S; t = 0, c, 2c, ... (< T) plus 1
    # The LDM code's latent scale (z x scale_factor in training, / scale_factor before decoding). ALDM is published
    # with 1.0 (latents as they are), the only value mrtranslate trains and samples with: any other is refused.
    scale_factor: float = 1.0

    def validate(self, origin: str = "scheduler config") -> None:
        check_int(origin, "num_train_timesteps", self.num_train_timesteps, 2, 100_000)
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ModelFormatError(f"{origin}: unknown beta_schedule {self.beta_schedule!r} (scaled_linear, linear)")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelFormatError(
                f"{origin}: prediction_type {self.prediction_type!r} is not supported ({', '.join(PREDICTION_TYPES)})"
            )
        if self.timestep_spacing != "ldm":
            raise ModelFormatError(f"{origin}: timestep_spacing {self.timestep_spacing!r} is not supported (ldm)")
        if self.scale_factor != 1.0:
            raise ModelFormatError(
                f"{origin}: scale_factor {self.scale_factor} is not supported: ALDM trains and samples unscaled "
                "latents; set scale_factor to 1.0"
            )
        if not (0 < float(self.beta_start) < float(self.beta_end) < 1):
            raise ModelFormatError(f"{origin}: need 0 < beta_start < beta_end < 1")
        super().validate(origin)


def is_strength(value: object, zero: bool = True) -> bool:
    """A sampling strength is a number in [0, 1]: 1 samples from pure noise, as published; 0 runs no diffusion
    step and keeps MS-SPADE's target-like latent (the limit of starting from it with less and less noise). A
    scheduler needs at least one step: ``zero=False`` for its range, (0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return (0.0 <= float(value) if zero else 0.0 < float(value)) and float(value) <= 1.0


@dataclasses.dataclass(frozen=True)
class DDIMStep:
    """Coefficients of one DDIM update, as float32 scalars like the published sampler uses."""

    index: int  # position in the ascending timestep list
    timestep: int
    alpha: float
    alpha_prev: float
    sigma: float


class DDIMScheduler:
    """Holds the training schedule; builds DDIM step lists and applies the DDIM update."""

    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config = config or SchedulerConfig()
        T = config.num_train_timesteps
        if config.beta_schedule == "scaled_linear":
            betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
        self.betas = betas
        # The published model keeps alphas_cumprod as a float32 buffer; DDIM reads it from there.
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)

    # -- training (forward process) ------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(acp_t) x_0, (1 - acp_t) I) (DDPM eq. 4)."""
        acp = self.alphas_cumprod.to(x0.device)[t].to(torch.float32)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return (acp.sqrt().view(shape) * x0.float() + (1 - acp).sqrt().view(shape) * noise.float()).to(x0.dtype)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output at ``x_t = add_noise(x0, noise, t)`` for the config's prediction type."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        if kind == "residual":
            raise ValueError("a residual UNet's target is x0 minus MS-SPADE's latent: use residual_target")
        acp = self.alphas_cumprod.to(x0.device)[t].to(torch.float32)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return acp.sqrt().view(shape) * noise.float() - (1 - acp).sqrt().view(shape) * x0.float()

    @staticmethod
    def residual_target(x0: torch.Tensor, spade: torch.Tensor) -> torch.Tensor:
        """What a ``residual`` UNet learns to output: the clean latent minus MS-SPADE's target-like latent."""
        return x0.float() - spade.float()

    # -- sampling --------------------------------------------------------------------------------
    def timesteps(self, steps: int) -> torch.Tensor:
        """Ascending DDIM timesteps for ``steps`` steps, with the published spacing.

        c = T // S; t = arange(0, T, c) + 1. When T is not a multiple of S this yields more than S
        timesteps (S = 7 gives 8), exactly as the published sampler does. A timestep equal to T (where
        the published sampler fails with an index error, e.g. S = 3) becomes T - 1.
        """
        T = self.config.num_train_timesteps
        limit = T // 2
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
            raise UsageError(
                f"steps = {steps!r}: use an integer from 1 to {limit} (the published DDIM spacing "
                f"indexes past the {T}-step schedule beyond that)"
            )
        c = T // steps
        ts = torch.arange(0, T, c, dtype=torch.long) + 1
        # When c divides T - 1 (e.g. S = 3) the published code indexes alphas_cumprod[T] and crashes;
        # we start from the last trained timestep instead.
        return ts.clamp_(max=T - 1)

    def steps(self, steps: int, eta: float, strength: float = 1.0) -> list[DDIMStep]:
        """Per-step coefficients (DDIM eq. 16): alpha_t, alpha_{t-1} and sigma_t(eta), in sampling order.

        ``strength`` < 1 keeps only the steps whose timestep is at most ``strength * T`` (sampling then starts
        from a noised latent at the first kept timestep instead of pure noise, see ``ALDMPipeline.sample``);
        the coefficients of the kept steps are those of the full list.
        """
        if not 0.0 <= float(eta) <= 10.0:
            raise UsageError(f"eta = {eta!r}: use a value between 0 (deterministic) and 1 (DDPM-like)")
        if not is_strength(strength, zero=False):
            raise UsageError(f"strength = {strength!r}: a scheduler takes a number in (0, 1] (1: from pure noise, "
                             "as published; strength 0 runs no step, only the pipeline takes it)")
        ts = self.timesteps(steps)
        acp = self.alphas_cumprod
        alphas = acp[ts].to(torch.float64)
        alphas_prev = torch.cat([acp[:1], acp[ts[:-1]]]).to(torch.float64)
        # The published sampler mixes a float32 tensor into float64 NumPy maths, so 1 / (1 - a_t) is
        # rounded to float32 before the product; reproduce that rounding to get identical sigmas.
        inv_one_minus_a = (1 - acp[ts]).reciprocal().to(torch.float64)
        sigmas = float(eta) * torch.sqrt((1 - alphas_prev) * inv_one_minus_a * (1 - alphas / alphas_prev))
        out = [
            DDIMStep(i, int(ts[i]), float(alphas[i]), float(alphas_prev[i]), float(sigmas[i]))
            for i in range(len(ts))
        ]
        if float(strength) < 1.0:
            limit = float(strength) * self.config.num_train_timesteps
            out = [st for st in out if st.timestep <= limit]
            if not out:
                raise UsageError(
                    f"strength {strength} with {steps} steps leaves no DDIM step (the smallest timestep is "
                    f"{int(ts[0])} of {self.config.num_train_timesteps}): raise the strength or the steps"
                )
        return out[::-1]

    def coefficients(self, steps: int, eta: float) -> dict[str, torch.Tensor]:
        """The ascending timesteps, alphas, alphas_prev and sigmas (float64), for inspection and tests."""
        s = self.steps(steps, eta)[::-1]
        return {
            "timesteps": torch.tensor([x.timestep for x in s]),
            "alphas": torch.tensor([x.alpha for x in s], dtype=torch.float64),
            "alphas_prev": torch.tensor([x.alpha_prev for x in s], dtype=torch.float64),
            "sigmas": torch.tensor([x.sigma for x in s], dtype=torch.float64),
        }

    def split(self, step: DDIMStep, x: torch.Tensor, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` at ``x = x_t`` from the UNet's output, in float32, for the config's prediction type.

        epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)            (DDIM eq. 9, not clipped)
        sample:  eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
        residual: as sample; ``model_output`` is then x0, MS-SPADE's latent already added (``ALDMPipeline.sample``)
        v:       x0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v   (Salimans & Ho 2022, eq. 5)
        """
        f32 = torch.float32
        a = torch.tensor(step.alpha, dtype=f32)
        sqrt_one_minus_a = torch.sqrt(1.0 - a)
        x, out = x.float(), model_output.float()
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (x - sqrt_one_minus_a * out) / a.sqrt(), out
        if kind in ("sample", "residual"):
            return out, (x - a.sqrt() * out) / sqrt_one_minus_a
        return a.sqrt() * x - sqrt_one_minus_a * out, sqrt_one_minus_a * x + a.sqrt() * out

    def step(self, step: DDIMStep, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One DDIM update from x_t to x_{t-1}, in float32 whatever the network's dtype.

        1. (x0, eps) from the UNet's output (:meth:`split`; epsilon prediction: DDIM eq. 9)
        2. dir = sqrt(1 - a_prev - sigma^2) eps                           (direction to x_t)
        3. x_{t-1} = sqrt(a_prev) x0 + dir + sigma z, z ~ N(0, I)         (DDIM eq. 12)
        """
        f32 = torch.float32
        a_prev = torch.tensor(step.alpha_prev, dtype=f32)
        sigma = torch.tensor(step.sigma, dtype=f32)
        x0, eps = self.split(step, x, model_output)
        out = a_prev.sqrt() * x0 + (1.0 - a_prev - sigma**2).sqrt() * eps
        if step.sigma > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise for every step")
            out = out + sigma * noise.float()
        return out

    def iterate(self, steps: int, eta: float) -> Iterator[DDIMStep]:
        yield from self.steps(steps, eta)
