"""Per-device execution choices and the memory planner.

* CUDA: fp16 autocast (GroupNorm statistics, softmax and the DDIM update stay float32),
  ``channels_last_3d``, SDPA attention (flash / memory-efficient kernels), optional ``torch.compile``.
* CPU: float32 with ``channels_last_3d`` (measured ~1.6x faster for conv3d here). Low precision only on
  request: bf16/fp16 conv3d without native CPU support is orders of magnitude slower.
* The VQ-GAN runs slab-wise (``models.streaming``) with the slab size the planner picks for the memory
  available, or refuses before allocating when even one-voxel slabs cannot fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence

import torch

from ..errors import MemoryBudgetError, UsageError, option

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. ``"cuda"`` without a GPU is a usage error.

    ``"mps"`` (Apple GPUs) where this PyTorch build has it; ``"cuda:N"`` picks the N-th CUDA GPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device 'cuda' was asked for but no CUDA GPU is available: use {option('device', 'cpu')} or auto")
    if dev.type == "mps" and not _mps_available():
        raise UsageError(f"device 'mps' was asked for but this PyTorch has no usable MPS (Apple GPU): use {option('device', 'cpu')} or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_precision(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: fp16 on CUDA and fp32 on CPU by default."""
    if isinstance(precision, torch.dtype):
        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(precision, str(precision))
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if p != "fp32" and device.type == "cpu":
        logger.warning("%s on CPU: conv3d without native low-precision support can be very slow", p)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (free GPU memory, or MemAvailable on Linux)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How the pipeline executes: device, compute dtype, memory layout, memory budget."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    channels_last: bool = True
    max_memory: int | None = None  # bytes; None = what the device has free
    compile: bool = False
    streaming: bool = True  # slab-wise VQ-GAN (exact); False runs the plain forward

    @classmethod
    def create(
        cls,
        device: str | torch.device | None = None,
        precision: str | torch.dtype | None = None,
        channels_last: bool = True,
        max_memory: int | str | None = None,
        compile: bool = False,
        streaming: bool = True,
    ) -> Runtime:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        return cls(dev, prec, channels_last, parse_memory(max_memory), compile, streaming)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def budget(self) -> int:
        free = available_memory(self.device)
        return min(free, self.max_memory) if self.max_memory is not None else free

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """fp16/bf16 autocast on CUDA only (weights stay float32); float32 elsewhere."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            with torch.autocast("cuda", dtype=self.dtype):
                yield
        else:
            yield


def parse_memory(value: int | str | None) -> int | None:
    """``"8GB"``, ``"512MB"``, ``"1.5GiB"`` or a byte count -> bytes."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().upper().replace("IB", "B")
    units = {"TB": 1 << 40, "GB": 1 << 30, "MB": 1 << 20, "KB": 1 << 10, "B": 1}
    for unit, mult in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * mult)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"cannot read memory size {value!r}: write e.g. 8GB or 512MB") from None


# -- memory planner ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    slab: int
    persistent_bytes: int
    slab_bytes: int
    unet_bytes: int  # one UNet call: ``unet_rows`` rows of the sampling batch
    unet_rows: int = 1

    @property
    def peak_bytes(self) -> int:
        return max(self.persistent_bytes + self.slab_bytes, self.unet_bytes)


def _vqgan_widths(ch: int, ch_mult: Sequence[int]) -> list[tuple[int, int]]:
    """(channels, downsampling) of the VQ-GAN's activations at each level."""
    return [(ch * m, 2**i) for i, m in enumerate(ch_mult)]


def plan_memory(
    grid: Sequence[int],
    ch: int,
    ch_mult: Sequence[int],
    n_targets: int,
    unet_channels: int,
    unet_mult: Sequence[int],
    bytes_per_value: int,
    budget: int,
    latent_factor: int = 4,
    slab_fraction: float = 0.25,
) -> MemoryPlan:
    """Pick the VQ-GAN slab height, and how many rows of the sampling batch (``n_targets``: targets times
    samples) each UNet call takes, for translating one ``grid``-sized volume.

    Estimates (in values): the streaming VQ-GAN holds at most three activations of a level at once (input,
    conv output, and the residual output where widths change) and, per slab row, about six activation
    rows of temporaries (normalised input with halo, conv output, its copy). The slab is the largest whose
    temporaries stay within ``slab_fraction`` of the persistent activations or 256 MiB, whichever is more
    (large slabs run at full convolution speed; the fraction bounds the extra memory) and whose peak fits
    ``budget``; smaller slabs are used when the budget is tight. The sampler holds the UNet's activations of
    the rows of one call: as many rows as stay within the VQ-GAN's peak (the sampler never sets the peak;
    one row at least) and the budget. Rows are independent, so any split computes the same result.
    MemoryBudgetError is raised before anything is allocated when one slab row or one UNet row cannot fit.
    """
    d, h, w = (int(g) for g in grid)
    persistent = 0
    row_cost = 0
    for channels, down in _vqgan_widths(ch, ch_mult):
        vox = (d // down) * (h // down) * (w // down)
        persistent = max(persistent, 3 * channels * vox)
        row_cost = max(row_cost, 6 * channels * (h // down) * (w // down))
    lat = (d // latent_factor) * (h // latent_factor) * (w // latent_factor)
    unet = sum(6 * unet_channels * m * lat // (8**i) for i, m in enumerate(unet_mult))
    unet_row_bytes = unet * bytes_per_value * 2
    persistent_bytes = persistent * bytes_per_value
    row_bytes = row_cost * bytes_per_value
    # large slabs run at full convolution speed: allow at least ~256 MiB of temporaries
    preferred = max(1, min(d, max(int(slab_fraction * persistent_bytes / row_bytes), (256 << 20) // row_bytes) - 2))
    fits = (budget - persistent_bytes) // row_bytes - 2
    if fits >= 1 and unet_row_bytes <= budget:
        slab = int(min(preferred, fits))
        slab_bytes = (slab + 2) * row_bytes
        rows = max(1, int(n_targets))
        if unet_row_bytes:
            rows = max(1, min(rows, (persistent_bytes + slab_bytes) // unet_row_bytes, budget // unet_row_bytes))
        return MemoryPlan(slab, persistent_bytes, slab_bytes, rows * unet_row_bytes, int(rows))
    need = MemoryPlan(1, persistent_bytes, 3 * row_bytes, unet_row_bytes).peak_bytes
    raise MemoryBudgetError(
        f"translating a {d}x{h}x{w} grid needs about {_size(need)} but only {_size(budget)} is available: "
        f"free memory, raise {option('max_memory')}, or use a device with more memory"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
