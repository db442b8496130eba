"""Diffusion schedules and samplers: pure tensor maths, all randomness through a ``torch.Generator``.

``DDIMScheduler`` holds the training schedule and samples with DDIM as published; the multistep solvers
``DPMSolverMultistep`` ("dpm++2m") and ``UniPCMultistep`` ("unipc") sample the same schedule in fewer steps.
"""

from .ddim import DDIMScheduler, SchedulerConfig
from .dpm_solver import DPMSolverMultistep
from .solver import SOLVER_LABELS, SOLVERS, MultistepSolver, SolverState, check_solver
from .unipc import UniPCMultistep

__all__ = [
    "SOLVERS", "SOLVER_LABELS", "DDIMScheduler", "DPMSolverMultistep", "MultistepSolver", "SchedulerConfig",
    "SolverState", "UniPCMultistep", "check_solver", "multistep_solver",
]


def multistep_solver(name: str, schedule: DDIMScheduler, spacing: str = "linspace") -> MultistepSolver:
    """The multistep solver called ``name`` ("dpm++2m" or "unipc") over ``schedule``'s noise schedule."""
    solvers = {"dpm++2m": DPMSolverMultistep, "unipc": UniPCMultistep}
    if name not in solvers:
        raise ValueError(f"{name!r} is not a multistep solver ({', '.join(solvers)})")
    return solvers[name](schedule, spacing)
