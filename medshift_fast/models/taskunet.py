"""A compact, standard U-Net for downstream dense tasks (segmentation, per-pixel regression).

The network the utility benchmark trains on each training condition (``eval/utility``):
encoder levels of two 3x3 convolutions + GroupNorm + SiLU, 2x2 max-pool between levels,
transposed-convolution upsampling with skip concatenation, a 1x1 output head (Ronneberger et
al. 2015, with GroupNorm instead of BatchNorm so a batch of 8 crops trains the same as 1). It is
not the translation velocity field (``unet.py``): no time or domain input, no attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MedShiftError


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = 4 if c_out % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU())


class TaskUNet(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W); H, W multiples of 2**(levels-1).

    Args:
        widths: channels per level (the last is the bottleneck), e.g. (16, 32, 64).
        in_channels: image channels.
        out_channels: predicted channels (1 for a map or a mask's logit).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 1,
                 out_channels: int = 1) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or in_channels < 1 or out_channels < 1:
            raise MedShiftError(f"TaskUNet: widths must be positive, got {widths}")
        self.widths = widths
        self.enc = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.enc.append(_block(c, w))
            c = w
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(_block(2 * w, w))
            c = w
        self.head = nn.Conv2d(c, out_channels, 1)

    @property
    def factor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise MedShiftError(f"TaskUNet: input {tuple(x.shape[-2:])} must be divisible by {f}")
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = block(torch.cat([up(x), skip], 1))
        return self.head(x)
