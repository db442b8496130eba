"""What the three training stages share: devices and precision, optimizers, checkpoint state.

A stage holds its networks (``nets``: everything saved in a checkpoint, unwrapped), its optimizers and
an optional EMA, draws the batch of a step from ``(seed, step, rank)`` (:meth:`batch`) and runs one
optimisation step on a batch (:meth:`train_step`). The batch is separate from the step so that a test can
feed the same batch to one process or split it over several (DDP equivalence).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..models import VQGAN
from .checkpoint import load_module, load_optimizer_state, module_tensors, optimizer_state
from .config import TrainConfig, learning_rate
from .distributed import DistContext


class Stage:
    """Base class of the autoencoder, spade and diffusion stages."""

    name = ""
    metric_names: list[str] = []

    def __init__(self, cfg: TrainConfig, ctx: DistContext):
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: dict[str, torch.Tensor] = {}
        self.ema_updates = 0
        cuda = self.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # float16 needs loss scaling; bfloat16 has float32's range and does not
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # channels_last_3d on CPU only, and not under DDP there (its gradient buckets expect contiguous grads)
        cpu_cl = self.device.type == "cpu" and cfg.channels_last and not ctx.distributed
        self.memory_format = torch.channels_last_3d if cpu_cl else torch.contiguous_format
        # the authors' rule (scale_lr): the optimiser's rate is the config's per-sample rate x the global batch
        self.lr_scale = cfg.batch_size * ctx.world_size if cfg.scale_lr else 1

    # -- devices and precision ----------------------------------------------------------------------
    def place(self, module: nn.Module) -> nn.Module:
        """Move a network to this stage's device (and memory format on CPU)."""
        return module.to(self.device, memory_format=self.memory_format)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Move an input to the device; 5D float tensors take the convolutions' memory format."""
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 5 and x.is_floating_point():
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def adam(self, params: list[nn.Parameter], decoupled: bool = False) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        lr = self.cfg.lr * self.lr_scale
        return cls(params, lr=lr, betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay)

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
        else:
            loss.backward()
            optimizer.step()

    def finish_step(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def set_lr(self, step: int) -> None:
        """Every optimizer of the stage takes the schedule's learning rate for ``step`` (times ``lr_scale``)."""
        lr = learning_rate(self.cfg, step) * self.lr_scale
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    @property
    def lr(self) -> float:
        opt = next(iter(self.optimizers.values()))
        return float(opt.param_groups[0]["lr"])

    # -- the step (implemented by each stage) ------------------------------------------------------
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- EMA (diffusion) -----------------------------------------------------------------------------
    def init_ema(self, name: str, module: nn.Module) -> None:
        for k, p in module.named_parameters():
            self.ema[f"{name}/{k}"] = p.detach().clone()

    @torch.no_grad()
    def update_ema(self, name: str, module: nn.Module, decay: float, warmup: bool) -> None:
        self.ema_updates += 1
        if warmup:
            decay = min(decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for k, p in module.named_parameters():
            self.ema[f"{name}/{k}"].lerp_(p.detach(), 1.0 - decay)

    # -- checkpoint state ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for name, net in self.nets.items():
            tensors.update(module_tensors(f"model/{name}", net))
        optims: dict[str, Any] = {}
        for name, opt in self.optimizers.items():
            t, s = optimizer_state(name, opt)
            tensors.update(t)
            optims[name] = s
        tensors.update({f"ema/{k}": v for k, v in self.ema.items()})
        scalars: dict[str, Any] = {"optimizers": optims, "ema_updates": self.ema_updates}
        if self.scaler is not None:
            scalars["grad_scaler"] = {k: (float(v) if isinstance(v, float) else v) for k, v in self.scaler.state_dict().items()}
        return tensors, scalars

    def load_state(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any], origin: str) -> None:
        for name, net in self.nets.items():
            load_module(f"model/{name}", net, tensors, origin)
        for name, opt in self.optimizers.items():
            load_optimizer_state(name, opt, tensors, scalars["optimizers"][name], origin)
        for key in self.ema:
            with torch.no_grad():
                self.ema[key].copy_(tensors[f"ema/{key}"])
        self.ema_updates = int(scalars.get("ema_updates", 0))
        if self.scaler is not None and "grad_scaler" in scalars:
            self.scaler.load_state_dict(scalars["grad_scaler"])

    def metadata(self) -> dict[str, Any]:
        """Stage-specific scalars stored in every checkpoint (e.g. the VQ-GAN config and preprocessing)."""
        return {}


def weights_hash(module: nn.Module, prefixes: tuple[str, ...] = ("",)) -> str:
    """sha256 of the named tensors of ``module`` whose names start with one of ``prefixes``."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not name.startswith(prefixes):
            continue
        data = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


FIRST_STAGE_ENCODER = ("encoder.", "quant_conv.", "quantize.")


def frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def iter_batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def quantized(vqgan: VQGAN, codes: torch.Tensor) -> torch.Tensor:
    """The codebook vectors ``[B, C, ...]`` of codes ``[B, ...]`` (exact: the cached latents are codes)."""
    with torch.no_grad():
        return vqgan.quantize.lookup(codes.long())
