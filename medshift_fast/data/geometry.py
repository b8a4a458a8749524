"""From an input's own geometry to the network's working shape, and exactly back.

``plan_fit((H, W), size, resize, factor)`` describes how an image is resized and padded for the
network, ``fit.apply(img)`` does it and ``fit.restore(y)`` maps the network's output back to
(H, W), the input's exact geometry:

* ``resize="pad"``: the long side is scaled to ``size`` and the short side padded with -1 (air,
  as in training) to ``size`` x ``size``; restore crops the padding and resizes back.
* ``resize="crop"``: the short side is scaled to ``size`` -- the scale of training's centre crop --
  and, the U-Net being fully convolutional, the whole rectangle is translated (edge-padded up to
  a multiple of the network's factor), so no part of the input is cut off; restore crops the
  padding and resizes back.
* ``size="native"``: the input's own grid (or ``shape``: a resampled grid, e.g. the pixel
  spacing a model learned), only edge-padded to a multiple of the factor; the Translator tiles
  large grids, so memory stays flat.

Resizing is bilinear with antialiasing (as ``dataset.fit_square``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MedShiftError

__all__ = ["Fit", "plan_fit", "RESIZE_MODES"]

RESIZE_MODES = ("crop", "pad")


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def _up(n: int, f: int) -> int:
    return -(-n // f) * f


@dataclass(frozen=True)
class Fit:
    """The geometry of one input: (H, W) -> resized (h, w) -> padded (h + pt + pb, w + pl + pr).

    Attributes:
        src: (H, W) of the input.
        resized: (h, w) after resizing.
        pad: (top, bottom, left, right) padding added after resizing.
        value: the padding value (a float), or None for edge padding.
    """

    src: tuple[int, int]
    resized: tuple[int, int]
    pad: tuple[int, int, int, int]
    value: float | None

    @property
    def shape(self) -> tuple[int, int]:
        """The network's working shape (h + top + bottom, w + left + right)."""
        t, b, lf, r = self.pad
        return (self.resized[0] + t + b, self.resized[1] + lf + r)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """(H, W), (C, H, W) or (B, C, H, W) float -> (B, C, *shape) (B = 1 unless given)."""
        x = img.float()
        while x.dim() < 4:
            x = x.unsqueeze(0)
        if tuple(x.shape[-2:]) != self.src:
            raise MedShiftError(f"image of shape {tuple(x.shape[-2:])} does not match the planned "
                                f"geometry {self.src}")
        x = _resize(x, self.resized).clamp(-1.0, 1.0)
        t, b, lf, r = self.pad
        if any(self.pad):
            if self.value is None:
                x = F.pad(x, (lf, r, t, b), mode="replicate")
            else:
                x = F.pad(x, (lf, r, t, b), value=self.value)
        return x.contiguous()

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, *shape) network output -> (B, C, H, W) at the input's geometry, clamped."""
        t, b, lf, r = self.pad
        h, w = self.resized
        y = y[..., t:t + h, lf:lf + w].float()
        return _resize(y, self.src).clamp(-1.0, 1.0)


def plan_fit(src: tuple[int, int], size: int | str | None, resize: str = "crop",
             factor: int = 1, shape: tuple[int, int] | None = None) -> Fit:
    """The geometry for an input of shape ``src`` (see the module docstring).

    Args:
        src: (H, W) of the input.
        size: the network's working size S (an int), or "native" (the input's own size).
        resize: "crop" (short side -> S, whole rectangle) or "pad" (long side -> S, padded to
            S x S with -1).
        factor: the working shape must be a multiple of it (U-Net and codec downsampling).
        shape: with ``size="native"``: the (h, w) grid to resample to first (default: src).

    Raises:
        MedShiftError: a bad size or mode.
    """
    hh, ww = int(src[0]), int(src[1])
    if hh < 1 or ww < 1:
        raise MedShiftError(f"cannot fit an image of shape {src}")
    if resize not in RESIZE_MODES:
        raise MedShiftError(f"unknown resize mode {resize!r}; choose crop or pad")
    if size == "native":
        h, w = (hh, ww) if shape is None else (max(1, int(shape[0])), max(1, int(shape[1])))
        value = None
        ph, pw = _up(h, factor) - h, _up(w, factor) - w
        return Fit((hh, ww), (h, w), (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2), value)
    try:
        s = int(size)
    except (TypeError, ValueError):
        raise MedShiftError(f"size must be a number of pixels or 'native', got {size!r}") from None
    if s < 1:
        raise MedShiftError(f"size must be >= 1, got {s}")
    if resize == "pad":
        if s % factor:
            raise MedShiftError(f"size {s} must be a multiple of {factor} for this model")
        k = s / max(hh, ww)
        h, w = min(s, max(1, round(hh * k))), min(s, max(1, round(ww * k)))
        ph, pw = s - h, s - w
        return Fit((hh, ww), (h, w), (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2), -1.0)
    k = s / min(hh, ww)
    h, w = max(s, round(hh * k)), max(s, round(ww * k))
    ph, pw = _up(h, factor) - h, _up(w, factor) - w
    return Fit((hh, ww), (h, w), (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2), None)
