"""Pure networks of ALDM and their configuration dataclasses (no I/O, no devices)."""

from .spade import SPADEGenerator
from .unet import UNet, UNetConfig
from .vqgan import VQGAN, VQGANConfig

__all__ = ["VQGAN", "VQGANConfig", "SPADEGenerator", "UNet", "UNetConfig"]
