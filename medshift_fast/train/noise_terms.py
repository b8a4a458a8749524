"""The detector noise models (``models.texture``) inside adversarial distillation
(``train.adversarial``), as pure functions of a batch:

* :func:`batch_texture` (``--texture-top-up``): the noise the discriminator sees on top of a
  training translation, each target's fitted model topped up by what the batch's own
  noise-free translations of that target already carry (the top-up a saved run gets);
* :func:`saved_texture`: the models a saved run records, each topped up by what the (EMA)
  student's noise-free translations of training sources still carry;
* :func:`whitening_weight` (``--disc-whiten``): the per-pixel factor that puts the
  discriminator's fine-scale residual in units of the target's grain (the grain's amplitude
  varies tenfold with the signal);
* :func:`source_noise` (``--consistency-weight``, ``--denoise-weight``): fresh noise of each
  crop's source domain;
* :func:`dose_gap_noise`, :func:`dose_input` (``--dose-weight``): the noise a real target
  image lacks to carry the source dose's noise level (the dose term's Noisier2Noise input),
  for the pairs :func:`dose_pairs_of` reads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import MedShiftError
from ..models.discriminator import lowpass
from ..models.texture import SIGNAL_SIGMA, DetectorNoise

__all__ = ["batch_texture", "dose_gap_noise", "dose_input", "dose_labels", "dose_pairs_of",
           "saved_texture", "source_noise", "whitening_weight"]


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
def saved_texture(texture: dict[str, dict], student, pairs, x: torch.Tensor, y: torch.Tensor,
                  tau: float, pixels: Callable[[torch.Tensor], torch.Tensor],
                  device) -> dict[str, dict]:
    """``texture`` (target label -> fitted model) with each model topped up by the noise-free
    translations, at ``tau``, of (up to 96, evenly spread) training images ``x`` of each source
    domain paired with that target (``pairs``: (source, target) labels; ``y``: the labels of
    ``x``), translated by ``student`` in batches of 16 on ``device``."""
    out = {}
    for key, model in texture.items():
        g, own = int(key), []
        for a, _ in (p for p in pairs if p[1] == g):
            xs = x[y == a]
            xs = xs[torch.linspace(0, xs.shape[0] - 1, min(96, xs.shape[0])).long()]
            for k in range(0, xs.shape[0], 16):
                xb = xs[k:k + 16].to(device)
                n = xb.shape[0]
                own.append(student.translate(xb, tau, torch.full((n,), a, device=device),
                                             torch.full((n,), g, device=device)).float())
        own = pixels(torch.cat(own)).clamp(-1, 1)
        out[key] = DetectorNoise.from_dict(model).top_up(own).to_dict()
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


def dose_gap_noise(src: DetectorNoise, tgt: DetectorNoise, y: torch.Tensor,
                   n: torch.Tensor) -> torch.Tensor:
    """The noise that takes real target-dose images ``y`` (B, C, H, W) to the source dose's
    noise level, from standard-normal maps ``n`` (B, 1, H, W): zero mean, std
    sqrt(max(a_src(s)^2 - a_tgt(s)^2, 0)) at the local signal s (``SIGNAL_SIGMA`` low-pass of
    y) and the target's detector correlation -- so y + m has the source's noise variance where
    the two detectors share that correlation (the same detector at two doses); none where the
    target is the noisier."""
    from ..models.texture import _blur

    s = _blur(y.float(), SIGNAL_SIGMA)
    extra = (src.amplitude(s) ** 2 - tgt.amplitude(s) ** 2).clamp_min(0).sqrt()
    return extra * tgt.correlate(n.to(s.dtype))


def source_noise(models: dict[int, DetectorNoise], x: torch.Tensor, ys: torch.Tensor,
                 n: torch.Tensor) -> torch.Tensor:
    """Noise of each crop's source domain ``ys`` (its fitted model at the crop's low-passed
    signal) from standard-normal maps ``n`` (B, 1, H, W); zero for domains without a model."""
    from ..models.texture import _blur

    s = _blur(x.float(), SIGNAL_SIGMA)
    out = torch.zeros_like(s)
    for a, model in models.items():
        out = out + (ys == a).to(s.dtype).view(-1, 1, 1, 1) * model.noise(s, n)
    return out.to(x.dtype)


def dose_pairs_of(cfg, pairs: tuple[tuple[int, int], ...],
                  domains: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The (source, target) labels of ``--dose-pairs``: each one of the pairs the student learns
    (``pairs``); empty without ``--dose-weight``."""
    from .distill_task import pairs_of

    if not cfg.dose_pairs:
        return ()
    out = pairs_of(cfg.dose_pairs, domains)
    for a, b in out:
        if (a, b) not in pairs:
            raise MedShiftError(f"--dose-pairs names {domains[a]}:{domains[b]}, which the student "
                                "does not learn; add it to --pairs or drop it from --dose-pairs")
    return out


def dose_labels(pairs: tuple[tuple[int, int], ...], b: int,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target labels of ``b`` dose-term crops, cycling through ``pairs``."""
    pick = [pairs[i % len(pairs)] for i in range(b)]
    return (torch.tensor([a for a, _ in pick], device=device),
            torch.tensor([g for _, g in pick], device=device))


def dose_input(src: dict[int, DetectorNoise], tgt: dict[int, DetectorNoise], y: torch.Tensor,
               ys: torch.Tensor, yt: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Real target crops ``y`` raised to their source dose's noise level: y + m, m the
    :func:`dose_gap_noise` of each crop's pair (labels ``ys`` -> ``yt``) from the maps ``n``."""
    return y + torch.cat([dose_gap_noise(src[int(a)], tgt[int(g)], y[k:k + 1], n[k:k + 1])
                          for k, (a, g) in enumerate(zip(ys.tolist(), yt.tolist()))])
