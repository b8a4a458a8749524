"""The detector noise models (``models.texture``) inside adversarial distillation
(``train.adversarial``), as pure functions of a batch:

* :func:`batch_texture` (``--texture-top-up``): the noise the discriminator sees on top of a
  training translation, each target's fitted model topped up by what the batch's own
  noise-free translations of that target already carry (the top-up a saved run gets);
* :func:`whitening_weight` (``--disc-whiten``): the per-pixel factor that puts the
  discriminator's fine-scale residual in units of the target's grain (the grain's amplitude
  varies tenfold with the signal).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import MedShiftError
from ..models.discriminator import lowpass
from ..models.texture import SIGNAL_SIGMA, DetectorNoise

__all__ = ["batch_texture", "whitening_weight"]


def batch_texture(texture: dict[str, dict], clean: torch.Tensor, n: torch.Tensor,
                  y_tgt: torch.Tensor,
                  pixels: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Noise for the noise-free translations ``clean`` (B, C, H, W) from the maps ``n``
    (B, 1, H, W): for each target label g in ``texture`` (label -> ``DetectorNoise.to_dict``),
    its model topped up (:meth:`DetectorNoise.top_up`) by the detached images of ``clean`` with
    ``y_tgt == g`` (``pixels`` maps them to image space), or the full model where they have too
    few pixels to measure; zero for other labels."""
    out = torch.zeros_like(clean)
    for key, d in texture.items():
        m = y_tgt == int(key)
        if not bool(m.any()):
            continue
        model = DetectorNoise.from_dict(d)
        try:
            model = model.top_up(pixels(clean[m].detach()).clamp(-1, 1))
        except MedShiftError:
            pass
        out = out + m.to(clean.dtype).view(-1, 1, 1, 1) * model.noise(clean, n)
    return out


@torch.no_grad()
def whitening_weight(models: dict[int, DetectorNoise], img: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor | None:
    """(B, 1, H, W): for images of a label in ``models``, that target's median measured noise
    std over its std at each pixel's local signal (the 1.5-px low-pass of the image, channels
    averaged); 1 for other labels. None when ``models`` is empty."""
    if not models:
        return None
    sig = lowpass(img.detach().float().mean(1, keepdim=True), SIGNAL_SIGMA)
    w = torch.ones_like(sig)
    for g, model in models.items():
        ref = float(np.median(model.residual_std))
        m = (y == g).view(-1, 1, 1, 1)
        w = torch.where(m, ref / model.measured_std(sig).clamp_min(1e-6), w)
    return w.to(img.dtype)
