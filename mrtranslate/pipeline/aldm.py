"""ALDMPipeline: tensors in, tensors out.

encode (VQ-GAN, quantized) -> target_like (MS-SPADE) -> sample (DDIM, or a multistep solver, over the
diffusion UNet, every target in one batch) -> decode (VQ-GAN decoder, no re-quantization). ``sample`` is
the plain sampling loop;
``sample_mean`` (several samples averaged), ``sample_by_strength`` (one strength per target) and
``generate`` (a model's defaults under ``SamplingOptions``) are thin wrappers over it. ``refine`` runs the
optional detail refiner on an output already on the input's grid (:mod:`.refine`). The model folder on
disk is :mod:`.folder`'s.

About 400 lines: the four stages and the wrappers share the class's device, layout and target checks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import VQGAN, UNet, UNetConfig, VQGANConfig
from ..models import streaming
from ..models.refiner import Refiner
from .config import PipelineConfig, check_samples
from .folder import default_model_card, load_pipeline, save_pipeline
from .options import SamplingOptions
from .refine import applies, refine
from .runtime import MemoryPlan, Runtime, plan_memory
from ..schedulers import DDIMScheduler, SchedulerConfig, check_solver, multistep_solver
from ..schedulers.ddim import is_strength

logger = logging.getLogger(__name__)

class ALDMPipeline:
    """The ALDM networks and sampler, with tensor-in / tensor-out methods.

    Images are ``[B, 1, D, H, W]`` in the model's intensity scale (about [-1, 1]); latents are
    ``[B, C, D/f, H/f, W/f]``; targets are class ids (the index of a modality in ``config.modalities``).
    """

    def __init__(
        self,
        vqgan: VQGAN,
        unet: UNet | None = None,
        scheduler: DDIMScheduler | None = None,
        config: PipelineConfig | None = None,
        refiner: Refiner | None = None,
    ):
        if (unet is None) != (scheduler is None):
            raise ValueError("unet and scheduler come together")
        self.vqgan = vqgan.eval()
        self.unet = unet.eval() if unet is not None else None
        self.scheduler = scheduler
        self.refiner = refiner.eval() if refiner is not None else None
        comps = ("vqgan",) + (("unet", "scheduler") if unet is not None else ()) + (("refiner",) if refiner else ())
        self.config = config or PipelineConfig(components=comps)
        self.config.components = comps
        self.runtime = Runtime(channels_last=False, streaming=False)

    # -- construction and persistence --------------------------------------------------------------
    @classmethod
    def from_configs(
        cls,
        vqgan: VQGANConfig | None = None,
        unet: UNetConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        config: PipelineConfig | None = None,
        first_stage_only: bool = False,
    ) -> ALDMPipeline:
        """A pipeline with freshly initialised (random) weights; published configuration by default."""
        v = VQGAN(vqgan or VQGANConfig())
        if first_stage_only:
            return cls(v, config=config)
        return cls(v, UNet(unet or UNetConfig()), DDIMScheduler(scheduler or SchedulerConfig()), config)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        runtime: Runtime | None = None,
    ) -> ALDMPipeline:
        """Load a model folder (see ``save_pretrained``). Only JSON and safetensors are read; never pickle.

        Every config is validated before any network is allocated. Loads on CPU in float32 unless told
        (``device``/``dtype``), or as ``runtime`` says (see ``configure``).
        """
        return load_pipeline(cls, folder, device=device, dtype=dtype, runtime=runtime)

    def save_pretrained(self, folder: str | Path, model_card: str | None = None) -> Path:
        """Write the model folder: model_index.json, vqgan/, unet/ and scheduler/ (when present), README.md."""
        return save_pipeline(self, folder, model_card)

    def default_model_card(self) -> str:
        return default_model_card(self.config)

    # -- runtime ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.vqgan.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vqgan.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ALDMPipeline:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        if device is not None:  # the memory planner and autocast follow the weights
            self.runtime = dataclasses.replace(self.runtime, device=torch.device(device))
        return self

    def configure(self, runtime: Runtime) -> ALDMPipeline:
        """Adopt ``runtime``: move the weights (float32; low precision runs through CUDA autocast), set the
        memory layout, and use slab-wise VQ-GAN execution when it asks for it."""
        self.runtime = runtime
        if runtime.device.type == "cuda":
            # one volume's shapes repeat for every DDIM step: let cuDNN time its algorithms once and keep the best
            torch.backends.cudnn.benchmark = True
        for m in self.modules():
            m.to(device=runtime.device, dtype=torch.float32)
            m.to(memory_format=runtime.memory_format)
        if runtime.compile and self.unet is not None:
            self.unet = torch.compile(self.unet, dynamic=False)  # type: ignore[assignment]
        return self

    def plan(self, grid: Sequence[int], n_targets: int) -> MemoryPlan:
        """Memory plan of translating one ``grid``-sized volume into ``n_targets`` targets."""
        vq = self.vqgan.config
        uc = self.unet.config if self.unet is not None else None
        return plan_memory(
            grid,
            vq.ch,
            vq.ch_mult,
            n_targets,
            uc.model_channels if uc else 0,
            uc.channel_mult if uc else (),
            torch.finfo(self.runtime.dtype).bits // 8,
            self.runtime.budget(),
            latent_factor=vq.downsampling_factor,
        )

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.runtime.memory_format) if x.dim() == 5 else x

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.vqgan, self.unet, self.refiner) if m is not None]

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    @property
    def latent_divisor(self) -> int:
        """Image sides must be multiples of this (VQ-GAN factor times UNet factor)."""
        f = self.vqgan.config.downsampling_factor
        return f * (self.unet.config.downsampling_factor if self.unet is not None else 1)

    def _targets(self, targets: torch.Tensor | Sequence[int], n: int | None = None) -> torch.Tensor:
        t = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        k = len(self.modalities)
        if t.numel() == 0 or bool(((t < 0) | (t >= k)).any()):
            raise UsageError(f"target class ids must be in 0..{k - 1} ({', '.join(self.modalities)}), got {t.tolist()}")
        return t.to(self.device)

    def _source(self, source: int | None, n: int) -> torch.Tensor | None:
        """The source class id for each of ``n`` targets; None when MS-SPADE does not use it."""
        if self.vqgan.spade.source_gate is None:
            return None
        k = len(self.modalities)
        if source is None:
            raise UsageError("this model's MS-SPADE has a per-pair source gate: pass the source class id "
                             f"(source=, 0..{k - 1}: {', '.join(self.modalities)})")
        if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < k:
            raise UsageError(f"source class id must be in 0..{k - 1} ({', '.join(self.modalities)}), got {source!r}")
        return torch.full((n,), source, dtype=torch.long, device=self.device)

    # -- the four stages -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, 1, D, H, W]`` in [-1, 1] -> quantized latent ``[B, C, D/f, H/f, W/f]``."""
        f = self.vqgan.config.downsampling_factor
        if x.dim() != 5 or any(s % f for s in x.shape[2:]):
            raise UsageError(f"encode expects [B, 1, D, H, W] with sides divisible by {f}, got {tuple(x.shape)}")
        x = self._layout(x.to(device=self.device, dtype=self.dtype))
        with self.runtime.autocast():
            if self.runtime.streaming:
                slab = self.plan(x.shape[2:], 1).slab
                z = streaming.encode_continuous(self.vqgan, x, slab)
            else:
                z = self.vqgan.encode_continuous(x)
            zq, _ = self.vqgan.quantize(z.float())
        return zq.contiguous()

    @torch.inference_mode()
    def target_like(
        self, z_q: torch.Tensor, targets: torch.Tensor | Sequence[int], source: int | None = None
    ) -> torch.Tensor:
        """MS-SPADE: map the quantized source latent to a target-like latent for each target class.

        ``source`` (the source's class id) is needed by, and only used by, a model with a source gate.
        """
        t = self._targets(targets)
        s = self._source(source, t.numel())
        if z_q.shape[0] == 1 and t.numel() > 1:
            z_q = z_q.expand(t.numel(), *z_q.shape[1:])
        with self.runtime.autocast():
            out = self.vqgan.spade(self._layout(z_q.to(device=self.device, dtype=self.dtype)), t, s)
        return out.float().contiguous()

    def _target_like_once(
        self, z_q: torch.Tensor, z_src: torch.Tensor, t: torch.Tensor, source: int | None
    ) -> torch.Tensor:
        """``target_like(z_src, t)`` for a batch; with one source latent (``z_q`` of batch 1), MS-SPADE runs once per
        distinct target and its outputs are repeated: the draws of a target share it (``samples`` k costs k times
        the UNet, not k times MS-SPADE)."""
        if z_q.shape[0] != 1 or t.numel() == 1:
            return self.target_like(z_src, t, source)
        distinct, index = torch.unique(t, sorted=False, return_inverse=True)
        if distinct.numel() == t.numel():
            return self.target_like(z_src, t, source)
        return self.target_like(z_q, distinct, source)[index.to(self.device)].contiguous()

    @torch.inference_mode()
    def sample(
        self,
        z_q: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        steps: int = 200,
        eta: float = 1.0,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: bool = True,
        strength: float = 1.0,
        source: int | None = None,
        solver: str = "ddim",
    ) -> torch.Tensor:
        """DDIM (or ``solver``) for every target in one batched pass; returns the target latents ``[T, C, ...]``.

        ``z_q`` of batch 1 is broadcast over the targets. The UNet sees ``cat([x_t, z_src, spade(z_src)])``
        and the target class as its label. Noise (``x_T`` when not given, and the per-step noise when
        ``eta > 0``) is drawn from ``generator`` so that a seed reproduces a run; with one generator per
        target, each target's result does not depend on which other targets share the batch.

        ``strength`` 1 (the published sampler) starts from pure noise. ``strength`` s < 1 runs only the DDIM
        steps at timesteps <= s * T and starts from MS-SPADE's target-like latent noised to the first of them,
        ``sqrt(a_t) spade + sqrt(1 - a_t) x_T`` (SDEdit, Meng et al. 2022): fewer steps, and it skips the
        high noise levels, where a briefly trained UNet is least reliable. ``strength`` 0 runs no step: the result
        is MS-SPADE's target-like latent itself (``x_T`` and ``generator`` unused), what a model's ``pair_strength``
        0 asks for a pair whose diffusion stage does not improve on MS-SPADE. ``source``: as in ``target_like``.

        ``solver``: "ddim" (published), or a multistep ODE solver of the same schedule, "dpm++2m" or "unipc"
        (see :mod:`mrtranslate.schedulers`): ``steps`` spaced by their own rule, deterministic given ``x_T``
        (``eta`` is DDIM's only); ``strength`` keeps their timesteps at most ``strength * T`` alike.

        One sample of each target at one strength; ``sample_mean`` averages several, ``sample_by_strength``
        takes one strength per target, and ``generate`` applies a model's defaults (``SamplingOptions``).
        """
        if isinstance(strength, (list, tuple)):
            raise UsageError("sample takes one strength for every target: use sample_by_strength for one per target")
        if self.unet is None or self.scheduler is None:
            raise UsageError("this model folder has no diffusion UNet (first stage only): it cannot sample")
        t = self._targets(targets)
        n = t.numel()
        z_src = z_q.to(device=self.device, dtype=self.dtype)
        if z_src.shape[0] == 1 and n > 1:
            z_src = z_src.expand(n, *z_src.shape[1:])
        if z_src.shape[0] != n:
            raise UsageError(f"got {z_src.shape[0]} latents for {n} targets")
        f = self.unet.config.downsampling_factor
        if any(s % f for s in z_src.shape[2:]):
            raise UsageError(f"latent sides {tuple(z_src.shape[2:])} must be multiples of {f} for this UNet")
        multistep = None if check_solver(solver) == "ddim" else multistep_solver(solver, self.scheduler)
        if not is_strength(strength):
            raise UsageError(f"strength = {strength!r}: use a number in [0, 1] (1: from pure noise; 0: MS-SPADE only)")
        if float(strength) == 0.0:
            return self._target_like_once(z_q, z_src, t, source)
        plan = self.scheduler.steps(steps, eta, strength) if multistep is None else multistep.steps(steps, strength)
        spade = self._target_like_once(z_q, z_src, t, source)
        cond = self._layout(torch.cat([z_src, spade.to(z_src.dtype)], dim=1))
        shape = (n, self.unet.config.out_channels, *z_src.shape[2:])
        x = (x_T if x_T is not None else _randn(shape, generator)).to(self.device, torch.float32)
        if tuple(x.shape) != shape:
            raise UsageError(f"x_T has shape {tuple(x.shape)}, expected {shape}")
        if float(strength) < 1.0:
            a = torch.tensor(plan[0].alpha, dtype=torch.float32)
            x = a.sqrt() * spade + (1.0 - a).sqrt() * x  # target_like returns float32
        # a residual UNet predicts a correction to MS-SPADE's latent: x0 = spade + output
        offset = spade if self.scheduler.config.prediction_type == "residual" else None
        del spade
        grid = [s * self.vqgan.config.downsampling_factor for s in z_src.shape[2:]]
        chunks = _chunks(n, self.plan(grid, n).unet_rows)
        state = None  # a multistep solver's previous data predictions
        for st in tqdm(plan, desc="sampling", unit="step", disable=not progress, leave=False):
            ts = torch.full((n,), st.timestep, device=self.device, dtype=torch.long)
            # the UNet runs on the rows of the memory plan at a time (rows are independent: the same result);
            # the solver steps the whole batch, so noise is drawn as in one call
            with self.runtime.autocast():
                out = torch.cat([
                    self.unet(self._layout(torch.cat([x[r].to(self.dtype), cond[r]], dim=1)), ts[r], t[r]).float()
                    for r in chunks
                ])
            if offset is not None:
                out = out + offset
            if multistep is not None:
                x, state = multistep.step(st, x, out, state)
                continue
            noise = _randn(shape, generator).to(self.device) if st.sigma > 0 else None
            x = self.scheduler.step(st, x, out, noise)
        return x.contiguous()

    def sample_mean(
        self,
        z_q: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        samples: int,
        *,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The mean latent of ``samples`` draws of each target (not published): an estimate of the posterior
        mean, with less of the sampler's noise than any one sample. The k draws run in the same batch (k times
        the UNet's time; each UNet call takes the rows the memory plan allows). Target ``i``'s draws take, in
        turn, from generator ``i`` of a list; ``x_T`` then holds ``T * k`` noises, target by target. Other
        arguments: as ``sample``."""
        if check_samples(samples) == 1:
            return self.sample(z_q, targets, x_T=x_T, generator=generator, **kwargs)
        return self.sample_draws(z_q, targets, samples, x_T=x_T, generator=generator, **kwargs).mean(1).contiguous()

    def sample_draws(
        self,
        z_q: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        samples: int,
        *,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Every one of the ``samples`` draws of each target, ``[T, k, C, ...]``, not averaged: the draws whose
        mean ``sample_mean`` returns (same noise, same batch), for a spread across samples. Arguments: as
        ``sample_mean``."""
        k = check_samples(samples)
        if k == 1:
            return self.sample(z_q, targets, x_T=x_T, generator=generator, **kwargs)[:, None]
        t = self._targets(targets)
        n = t.numel()
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise UsageError(f"got {len(generator)} generators for {n} targets")
            generator = [g for g in generator for _ in range(k)]
        z_all = z_q if z_q.shape[0] == 1 else z_q.repeat_interleave(k, 0)  # batch 1 is broadcast by sample
        x = self.sample(z_all, t.repeat_interleave(k), x_T=x_T, generator=generator, **kwargs)
        return x.view(n, k, *x.shape[1:])

    def sample_by_strength(
        self,
        z_q: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        strengths: Sequence[float],
        samples: int = 1,
        *,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        draws: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One strength per target (see ``PipelineConfig.pair_strength``): the targets of each strength run as
        one ``sample_mean`` batch, in turn; with one generator per target, each target's result is the same as
        when sampled alone. ``draws``: every draw, ``[T, k, C, ...]``, as ``sample_draws``. Other arguments: as
        ``sample_mean``."""
        t = self._targets(targets)
        n = t.numel()
        if len(strengths) != n:
            raise UsageError(f"got {len(strengths)} strengths for {n} targets")
        k = check_samples(samples)
        if z_q.shape[0] not in (1, n):
            raise UsageError(f"got {z_q.shape[0]} latents for {n} targets")
        if isinstance(generator, (list, tuple)) and len(generator) != n:
            raise UsageError(f"got {len(generator)} generators for {n} targets")
        out: list[torch.Tensor | None] = [None] * n
        for s in dict.fromkeys(float(v) for v in strengths):  # distinct strengths, first-seen order
            idx = [i for i in range(n) if float(strengths[i]) == s]
            rows = [i * k + j for i in idx for j in range(k)]
            x = (self.sample_draws if draws else self.sample_mean)(
                z_q if z_q.shape[0] == 1 else z_q[idx], t[idx], k, strength=s,
                x_T=None if x_T is None else x_T[rows],
                generator=[generator[i] for i in idx] if isinstance(generator, (list, tuple)) else generator,
                **kwargs,
            )
            for j, i in enumerate(idx):
                out[i] = x[j]
        return torch.stack(out)  # type: ignore[arg-type]

    def resolve(
        self, options: SamplingOptions | None, targets: torch.Tensor | Sequence[int], source: int | None = None
    ) -> SamplingOptions:
        """``options`` over the model's defaults: steps, eta, samples and solver set, and strength one number, or
        a tuple with one per target where the model's ``pair_strength`` makes them differ (see ``strengths``)."""
        o = options or SamplingOptions()
        c = self.config
        strength = o.strength
        if strength is None:
            each = self.strengths(targets, source)
            strength = tuple(each) if isinstance(each, list) else each
        return dataclasses.replace(
            o, steps=c.default_steps if o.steps is None else o.steps, eta=c.default_eta if o.eta is None else o.eta,
            strength=strength, samples=c.default_samples if o.samples is None else o.samples,
            solver=c.default_solver if o.solver is None else o.solver,
        )

    def generate(
        self,
        z_q: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        options: SamplingOptions | None = None,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: bool = True,
        source: int | None = None,
        draws: bool = False,
    ) -> torch.Tensor:
        """Target latents with ``options`` over the model's defaults (see ``resolve``): ``sample``,
        ``sample_mean`` or ``sample_by_strength`` as they ask. ``options.seed`` is not used here: pass
        ``generator``. ``draws``: every draw, ``[T, k, C, ...]``, not their mean (see ``sample_draws``)."""
        o = self.resolve(options, targets, source)
        kwargs: dict[str, Any] = dict(steps=o.steps, eta=o.eta, generator=generator, progress=progress, source=source,
                                      solver=o.solver)
        if isinstance(o.strength, tuple):
            return self.sample_by_strength(z_q, targets, o.strength, o.samples, draws=draws, **kwargs)
        if draws:
            return self.sample_draws(z_q, targets, o.samples, strength=o.strength, **kwargs)
        return self.sample_mean(z_q, targets, o.samples, strength=o.strength, **kwargs)

    def strengths(self, targets: torch.Tensor | Sequence[int], source: int | None) -> float | list[float]:
        """The model's sampling strength for the targets from ``source`` (class ids): one number when every
        target has the same (``default_strength`` unless the model's ``pair_strength`` names the pair), else a
        list with one per target."""
        c = self.config
        if not c.pair_strength:
            return c.default_strength
        if source is None:
            raise UsageError("this model sets a sampling strength per pair (pair_strength): pass the source class id "
                             f"(source=, 0..{len(self.modalities) - 1}: {', '.join(self.modalities)}) or a strength")
        mods = self.modalities
        each = [c.strength_for(mods[source], mods[int(i)]) for i in self._targets(targets).tolist()]
        return each[0] if len(set(each)) == 1 else each

    def refines(self, spacing: Sequence[float], target: str | None = None) -> bool:
        """Whether the model's detail refiner runs on an input of voxel ``spacing`` (mm) (and, given, refines
        ``target``'s outputs); False without one."""
        return applies(self.refiner, spacing, target)

    def refine(self, source: torch.Tensor, output: torch.Tensor, source_class: int, target_class: int,
               spacing: Sequence[float]) -> torch.Tensor:
        """``output`` (``[D, H, W]``, in the output's intensity units, on the grid of ``source``, voxel ``spacing``
        in mm) through the detail refiner's steps for the target (:mod:`.refine`); UsageError when the model has
        none."""
        if self.refiner is None:
            raise UsageError("this model has no detail refiner")
        return refine(self.refiner, source, output, source_class, target_class, spacing=spacing,
                      target=self.config.modalities[target_class])

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image ``[B, 1, D, H, W]``, without re-quantization.

        With a streaming runtime, samples are decoded one at a time, slab-wise, to bound peak memory.
        """
        z = self._layout(z.to(device=self.device, dtype=self.dtype))
        with self.runtime.autocast():
            if not self.runtime.streaming:
                return self.vqgan.decode(z).float().contiguous()
            f = self.vqgan.config.downsampling_factor
            slab = self.plan([s * f for s in z.shape[2:]], 1).slab
            outs = [streaming.decode(self.vqgan, z[i : i + 1], slab).float() for i in range(z.shape[0])]
        return torch.cat(outs).contiguous()

    def translate(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        options: SamplingOptions | None = None,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: bool = True,
        source: int | None = None,
    ) -> torch.Tensor:
        """Source image ``[1, 1, D, H, W]`` -> one image per target ``[T, 1, D, H, W]``: encode, ``generate``
        with ``options`` over the model's defaults, decode."""
        lat = self.generate(self.encode(x), targets, options, generator=generator, progress=progress, source=source)
        return self.decode(lat)


def _chunks(n: int, rows: int) -> list[slice]:
    """``n`` rows in the fewest slices of at most ``rows``, of near-equal sizes (fewer distinct shapes)."""
    count = -(-n // max(1, rows))
    size = -(-n // count)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _randn(shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample ``i`` is drawn from generator ``i``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise UsageError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([_randn((1, *shape[1:]), g) for g in generator])
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
