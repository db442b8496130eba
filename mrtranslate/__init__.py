"""mrtranslate: translate 3D brain MRI between contrasts with the Adaptive Latent Diffusion Model (ALDM)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "MODALITIES", "ALDMPipeline", "Translator", "translate_dataset", "complete_dataset"]

from .modalities import MODALITIES


def __getattr__(name: str):
    # Heavy modules (torch) load on first use so that `mrtranslate --help` stays fast.
    if name == "ALDMPipeline":
        from .pipeline import ALDMPipeline

        return ALDMPipeline
    if name == "Translator":
        from .translator import Translator

        return Translator
    if name in ("translate_dataset", "complete_dataset"):
        from . import dataset_run

        return getattr(dataset_run, name)
    raise AttributeError(f"module 'mrtranslate' has no attribute {name!r}")
