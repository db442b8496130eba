"""mrtranslate: translate 3D brain MRI between contrasts with the Adaptive Latent Diffusion Model (ALDM)."""

from __future__ import annotations

__version__ = "0.8.0"

__all__ = ["__version__", "MODALITIES", "ALDMPipeline", "Translator", "translate_dataset", "complete_dataset"]

from . import _moved
from .modalities import MODALITIES

# Module paths from before the layer folders (mrtranslate.volumes, mrtranslate.metrics, ...) still import.
_moved.install()


def __getattr__(name: str):
    # Heavy modules (torch) load on first use so that `mrtranslate --help` stays fast.
    if name == "ALDMPipeline":
        from .pipeline import ALDMPipeline

        return ALDMPipeline
    if name == "Translator":
        from .translator import Translator

        return Translator
    if name in ("translate_dataset", "complete_dataset"):
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'mrtranslate' has no attribute {name!r}")
