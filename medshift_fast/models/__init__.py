"""Class-conditional U-Net velocity field and EMA."""

from .ema import EMA
from .unet import PRESETS, UNet, UNetConfig, build_model, count_parameters, preset_config

__all__ = ["EMA", "PRESETS", "UNet", "UNetConfig", "build_model", "count_parameters",
           "preset_config"]
