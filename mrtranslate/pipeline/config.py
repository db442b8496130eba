"""``model_index.json``: what a model folder declares about itself as a whole."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ModelFormatError, UsageError
from ..modalities import MODALITIES, canonical, pair_indices
from ..models.config import ModelConfig, check_int
from ..schedulers.ddim import is_strength
from ..schedulers.solver import SOLVER_LABELS, SOLVERS
from .standard import OutputStandard

#: The preprocessing of the published ALDM (BraTS 2021): 1 mm RAS grid of 144 x 192 x 144 voxels,
#: 0.5th / 99.5th percentiles mapped to -1 / +1.
PUBLISHED_PREPROCESSING: dict[str, Any] = {
    "spacing_mm": [1.0, 1.0, 1.0],
    "grid": [144, 192, 144],
    "lower_percentile": 0.5,
    "upper_percentile": 99.5,
}

COMPONENTS = ("vqgan", "unet", "scheduler", "refiner")
#: The format version of a model_index.json with ``output_standard`` (1 without: what every version reads).
STANDARD_FORMAT_VERSION = 2
#: The format version of a model_index.json whose folder has a ``refiner`` (older versions refuse it).
REFINER_FORMAT_VERSION = 3
#: The most diffusion samples averaged per target (``ALDMPipeline.sample``'s ``samples``).
MAX_SAMPLES = 64


def check_samples(samples: Any, name: str = "samples") -> int:
    """``samples`` when it is a number of diffusion samples to average, else UsageError naming ``name``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"{name} = {samples!r}: use an integer from 1 to {MAX_SAMPLES} (1 as published)")
    return samples


@dataclasses.dataclass
class PipelineConfig(ModelConfig):
    """Pipeline-level settings. ``components`` lists the subfolders present (``vqgan`` always)."""

    FORMAT_VERSION = 3

    modalities: tuple[str, ...] = MODALITIES
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PUBLISHED_PREPROCESSING))
    default_steps: int = 200
    default_eta: float = 1.0
    default_strength: float = 1.0  # 1: sample from pure noise, as the authors do (see DDIMScheduler.steps)
    default_samples: int = 1  # diffusion samples averaged per target; 1 as published (see ALDMPipeline.sample)
    #: "source->target" -> the sampling strength of that pair, where it differs from default_strength (not published)
    pair_strength: dict[str, float] = dataclasses.field(default_factory=dict)
    #: target -> the source that predicts it best on the model's validation data (``mrtranslate complete``)
    best_source: dict[str, str] = dataclasses.field(default_factory=dict)
    #: target -> landmarks its outputs are standardised to, with their percentiles (``pipeline.standard``; not
    #: published): ``{"percentiles": [...], "landmarks": {"flair": [...]}}``; empty: outputs as decoded
    output_standard: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the sampler: "ddim" (published; absent in older folders), "dpm++2m" or "unipc" (see mrtranslate.schedulers)
    default_solver: str = "ddim"
    components: tuple[str, ...] = ("vqgan", "unet", "scheduler")
    name: str = ""

    def validate(self, origin: str = "model_index.json") -> None:
        if not self.modalities or len(self.modalities) > 64:
            raise ModelFormatError(f"{origin}: modalities must list 1..64 names")
        try:
            mods = tuple(canonical(m) for m in self.modalities)
        except Exception as exc:  # noqa: BLE001 - reported as a format error of this file
            raise ModelFormatError(f"{origin}: {exc}") from None
        self.modalities = mods
        for c in self.components:
            if c not in COMPONENTS:
                raise ModelFormatError(f"{origin}: unknown component {c!r} (known: {', '.join(COMPONENTS)})")
        if "vqgan" not in self.components:
            raise ModelFormatError(f"{origin}: a model folder needs the 'vqgan' component")
        if ("unet" in self.components) != ("scheduler" in self.components):
            raise ModelFormatError(f"{origin}: 'unet' and 'scheduler' come together")
        check_int(origin, "default_steps", self.default_steps, 1, 1000)
        check_int(origin, "default_samples", self.default_samples, 1, MAX_SAMPLES)
        if self.default_solver not in SOLVERS:
            raise ModelFormatError(f"{origin}: default_solver {self.default_solver!r} is not one of {', '.join(SOLVERS)}")
        if not is_strength(self.default_strength):
            raise ModelFormatError(f"{origin}: default_strength must be a number in [0, 1], got {self.default_strength!r}")
        if not isinstance(self.pair_strength, dict):
            raise ModelFormatError(f"{origin}: pair_strength must be an object of 'source->target': strength")
        pairs: dict[str, float] = {}
        for key, value in self.pair_strength.items():
            ij = pair_indices(key, mods)
            if ij is None:
                raise ModelFormatError(f"{origin}: pair_strength key {key!r} must be 'source->target' with two "
                                       f"different modalities of {', '.join(mods)}")
            if not is_strength(value):
                raise ModelFormatError(f"{origin}: pair_strength[{key!r}] must be a number in [0, 1], got {value!r}")
            name = f"{mods[ij[0]]}->{mods[ij[1]]}"
            if name in pairs:
                raise ModelFormatError(f"{origin}: pair_strength names {name} twice")
            pairs[name] = float(value)
        self.pair_strength = pairs
        self.best_source = _checked_best_source(self.best_source, mods, origin)
        standard = OutputStandard.from_dict(self.output_standard, f"{origin}: output_standard")
        if standard is not None:
            foreign = [t for t in standard.targets if t not in mods]
            if foreign:
                raise ModelFormatError(f"{origin}: output_standard has landmarks of {', '.join(foreign)}, not a "
                                       f"modality of this model ({', '.join(mods)})")
        self.output_standard = standard.to_dict() if standard is not None else {}
        p = self.preprocessing
        if not isinstance(p, dict):
            raise ModelFormatError(f"{origin}: preprocessing must be an object")
        for key in ("spacing_mm", "grid"):
            v = p.get(key)
            if not isinstance(v, (list, tuple)) or len(v) != 3:
                raise ModelFormatError(f"{origin}: preprocessing.{key} must be a list of 3 numbers")
        for g in p["grid"]:
            check_int(origin, "preprocessing.grid", g, 4, 2048)
        for s in p["spacing_mm"]:
            if not isinstance(s, (int, float)) or not 0.05 <= float(s) <= 20:
                raise ModelFormatError(f"{origin}: preprocessing.spacing_mm {p['spacing_mm']} is out of range")
        super().validate(origin)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # a folder whose outputs are standardised or refined needs a version that reads output_standard and the
        # refiner: older ones refuse it ("upgrade mrtranslate") instead of silently writing other outputs; others
        # stay readable by all
        d["_format_version"] = (REFINER_FORMAT_VERSION if self.has_refiner
                                else STANDARD_FORMAT_VERSION if self.output_standard else 1)
        return d

    def strength_for(self, source: str, target: str) -> float:
        """The model's sampling strength for ``source`` -> ``target`` (canonical names): its ``pair_strength``
        entry, else ``default_strength``."""
        return self.pair_strength.get(f"{source}->{target}", self.default_strength)

    def sampling_summary(self) -> str:
        """The sampling the model suggests, in words, e.g. "50 DDIM steps, eta 1.0, strength 0.05 (t1->t1ce:
        0.02), mean of 4 samples" or "20 UniPC steps"."""
        if self.default_solver == "ddim":
            text = f"{self.default_steps} DDIM steps, eta {self.default_eta}"
        else:
            text = f"{self.default_steps} {SOLVER_LABELS.get(self.default_solver, self.default_solver)} steps"
        if self.default_strength < 1 or self.pair_strength:
            text += f", strength {_strength_words(self.default_strength)}"
        if self.pair_strength:
            text += " (" + ", ".join(f"{k}: {_strength_words(v)}" for k, v in self.pair_strength.items()) + ")"
        if self.default_samples > 1:
            text += f", mean of {self.default_samples} samples"
        return text

    @property
    def has_diffusion(self) -> bool:
        return "unet" in self.components

    @property
    def has_refiner(self) -> bool:
        return "refiner" in self.components


def _strength_words(strength: float) -> str:
    return "0, MS-SPADE only" if float(strength) == 0.0 else f"{strength}"


def _checked_best_source(best: Any, mods: tuple[str, ...], origin: str) -> dict[str, str]:
    """``best_source`` with canonical names, each target and source a modality of the model and not the same."""
    if not isinstance(best, dict):
        raise ModelFormatError(f"{origin}: best_source must be an object of target: source")
    out: dict[str, str] = {}
    for target, source in best.items():
        try:
            t, s = canonical(str(target)), canonical(str(source))
        except Exception:  # noqa: BLE001 - reported as a format error of this file
            t = s = None
        if t is None or s is None or t == s or t not in mods or s not in mods or t in out:
            raise ModelFormatError(f"{origin}: best_source entry {target!r}: {source!r} must name a target and a "
                                   f"different source among {', '.join(mods)}, each target once")
        out[t] = s
    return out
