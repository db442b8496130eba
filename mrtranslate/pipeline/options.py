"""``SamplingOptions``: how the diffusion stage samples, one object from the CLI through ``Translator`` to
``ALDMPipeline``.

A field left None takes the next level's value: a call's options over the translator's, the translator's
over the model's defaults (``model_index.json``: ``default_steps``, ``default_eta``, ``default_strength``
with its ``pair_strength`` exceptions, ``default_samples``, ``default_solver``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import UsageError
from ..schedulers.ddim import is_strength
from ..schedulers.solver import check_solver
from .config import check_samples


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings; None: the next level's (see the module's docstring).

    - ``steps``: DDIM steps over the whole schedule (a strength below 1 runs only the last part of them)
    - ``eta``: 0 deterministic DDIM, 1 as the authors sample
    - ``strength``: 1 starts from pure noise (published); s < 1 starts from MS-SPADE's latent noised to the
      fraction s of the schedule. Resolved by the pipeline into one number per target where the model sets
      strengths per pair (a tuple, in target order)
    - ``samples``: diffusion samples averaged per target (1 as published)
    - ``seed``: the seed of the per-target generators (``Translator``; the pipeline takes generators)
    - ``solver``: "ddim" (as published), "dpm++2m" or "unipc" (multistep solvers made for far fewer steps,
      deterministic given the initial noise, ``eta`` not used; see :mod:`mrtranslate.schedulers`)
    """

    steps: int | None = None
    eta: float | None = None
    strength: float | tuple[float, ...] | None = None
    samples: int | None = None
    seed: int | None = None
    solver: str | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or not 1 <= self.steps <= 1000):
            raise UsageError(f"steps = {self.steps!r}: use an integer from 1 to 1000")
        if self.eta is not None and (isinstance(self.eta, bool) or not isinstance(self.eta, (int, float))
                                     or not math.isfinite(self.eta) or self.eta < 0):
            raise UsageError(f"eta = {self.eta!r}: use a number >= 0 (0 deterministic, 1 as published)")
        each = self.strength if isinstance(self.strength, tuple) else (self.strength,)
        if self.strength is not None and not all(is_strength(s) for s in each):
            raise UsageError(f"strength = {self.strength!r}: use a number in [0, 1] (1: from pure noise; 0: MS-SPADE only)")
        if self.samples is not None:
            check_samples(self.samples)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UsageError(f"seed = {self.seed!r}: use an integer")
        if self.solver is not None:
            check_solver(self.solver)

    @classmethod
    def build(cls, base: SamplingOptions | None = None, **fields: Any) -> SamplingOptions:
        """``base`` (default: all None) with ``fields`` replaced, explicit None included; an unknown field is a
        TypeError, as for any unknown keyword argument."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(base or cls(), **fields)

    def over(self, base: SamplingOptions | None) -> SamplingOptions:
        """These options, with ``base``'s value wherever a field here is None."""
        if base is None:
            return self
        return SamplingOptions(**{
            f.name: getattr(base, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
            for f in dataclasses.fields(self)
        })

    def as_record(self) -> dict[str, Any]:
        """The fields as JSON-ready values (a per-target strength tuple as a list)."""
        d = dataclasses.asdict(self)
        if isinstance(d["strength"], tuple):
            d["strength"] = list(d["strength"])
        return d
