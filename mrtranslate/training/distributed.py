"""Processes and devices: a single process, or one of several started by ``torchrun`` (DistributedDataParallel).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised with gloo on CPU and nccl on CUDA;
each process trains on its own shard of the subjects, gradients are averaged by DDP, and only rank 0 writes
files. Decisions that depend on wall time or signals are taken jointly (:meth:`DistContext.any`), so every
process stops and checkpoints at the same step.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process runs and who it is among the training processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this context initialised the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in DistributedDataParallel when distributed (gradients averaged over processes)."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over all processes (itself in a single process)."""
        if not self.distributed:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR of ``flags`` over all processes."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather_float(self, value: float) -> list[float]:
        if not self.distributed:
            return [value]
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [float(x) for x in out]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            gc.collect()  # DDP wrappers caught in reference cycles still hold the group: free them first
            dist.destroy_process_group()


def resolve_device(spec: str | None, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` (this process's GPU under torchrun) or ``cuda:N``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but CUDA is not available: use --device cpu")
        if spec == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise UsageError(f"device {spec!r} is not a valid device name: use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    raise UsageError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def setup(device: str | None = None) -> DistContext:
    """This process's context: joins the process group when started by torchrun (or one already exists)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    owns = False
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    elif world > 1:
        dev = resolve_device(device, local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        owns = True
        logger.info("process %d of %d on %s (%s)", rank, world, dev, backend)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # fixed shapes every step: let cuDNN pick the fastest convolution once; TF32 for float32 products
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    return DistContext(device=dev, rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)
