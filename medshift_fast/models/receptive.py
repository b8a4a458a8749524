"""The receptive field of a network: how far an input pixel can reach an output pixel.

A translation network is *local* when its output at a pixel depends only on the inputs within
``halo`` pixels of it along each axis (no attention, no statistics over the image). Tiles of a
local network are then exact when they overlap by 2 x halo and each tile keeps only the pixels
at least ``halo`` inside its inner edges (``translate.tiling``); the Translator's overlap rule
takes ``receptive_halo`` of its network. ``measured_halo`` finds the same number from the
gradient's support, for any network, and tests that the derived value is that bound.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["measured_halo", "receptive_halo"]


def receptive_halo(model) -> int | None:
    """The halo in model-space pixels that a network states for itself, or None (not local).

    A lean student states it (``Student.halo``: ``models.lean.halo`` of its configuration); the
    U-Net (attention, GroupNorm) and the U-Net student have none: every output pixel depends on
    the whole input.
    """
    h = getattr(model, "halo", None)
    if h is None or isinstance(h, bool) or not isinstance(h, int) or h < 0:
        return None
    return int(h)


def measured_halo(fn: Callable[[torch.Tensor], torch.Tensor], channels: int, side: int,
                  points: int = 3, seed: int = 0) -> int:
    """The farthest input pixel (along an axis) whose gradient reaches an output pixel of ``fn``.

    Args:
        fn: (1, channels, side, side) float input -> (1, C, side, side) output (a network with
            its conditioning bound; weights should be non-trivial: random, or trained).
        channels: input channels.
        side: the probe's side (larger than twice the halo, a multiple of the network's factor).
        points: output pixels probed (near the centre, at different phases of the factor).
        seed: probe seed.

    Returns:
        max over the probed output pixels of the largest |dy|, |dx| with a nonzero gradient.
    """
    g = torch.Generator().manual_seed(seed)
    worst = 0
    c = side // 2
    for k in range(points):
        py, px = c + (k * 5) % 7 - 3, c + (k * 3) % 5 - 2
        x = torch.randn(1, channels, side, side, generator=g).requires_grad_(True)
        y = fn(x)
        y[0, :, py, px].sum().backward()
        ys, xs = torch.nonzero(x.grad.abs().sum((0, 1)) > 0, as_tuple=True)
        worst = max(worst, int((ys - py).abs().max()), int((xs - px).abs().max()))
    return worst
