"""Class-conditional U-Net velocity field, EMA, and the receptive field of a network."""

from .ema import EMA
from .receptive import measured_halo, receptive_halo
from .unet import PRESETS, UNet, UNetConfig, build_model, count_parameters, preset_config

__all__ = ["EMA", "PRESETS", "UNet", "UNetConfig", "build_model", "count_parameters",
           "measured_halo", "preset_config", "receptive_halo"]
