"""Diffusion schedules and samplers: pure tensor maths, all randomness through a ``torch.Generator``."""

from .ddim import DDIMScheduler, SchedulerConfig

__all__ = ["DDIMScheduler", "SchedulerConfig"]
