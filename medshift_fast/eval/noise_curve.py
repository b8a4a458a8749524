"""Noise level as a function of signal: the variance-vs-mean curve of an X-ray image set.

Quantum noise is signal dependent (Poisson: var ∝ counts, so after the log a std ∝ 1/sqrt(counts)),
so one noise number per image (``physics.noise_level``) hides whether a translation reproduces the
target's *shape* of that dependence. Here, per pixel:

* the local signal s = (G_sigma * x), the Gaussian low-pass of ``physics.highpass_residual``;
* the local noise residual r = ([1, −2, 1]ᵀ ⊗ [1, −2, 1]) * x / 6 (Immerkær's second difference,
  the estimator of ``physics.noise_level``: it annihilates anything affine along x or y, so smooth
  anatomy does not leak into it, and white noise of std n gives std n);
* pixels whose 3 x 3 support touches a clipped value (±1: saturation, where the grain is cut off)
  are left out.

Pixels are binned by s with one set of bin edges for every image set compared (from the target
domain's images, :func:`signal_bins`), and each bin's noise std is the robust 1.4826·MAD of r
over every pixel of the set in that bin (edges, sparse and large, fall in the tails the MAD
ignores). Like ``noise_level``, the estimator weights the highest frequencies: correlated (blurred)
noise reads below its total std, so compare curves of image sets with each other, not with a
physical dose.

**The body's signal range.** Air (or any unattenuated background) is a large, nearly noise-free
mode that would dominate the curve, so :func:`signal_bins` keeps only the body: the reference's
low-passed pixels are split in two by Otsu's threshold; the side that holds most of the image
borders is the background (so it works for either polarity), its median b the background level;
the body starts ``BODY_FROM`` (10 %) of the way from b to the far end of the signal (its 0.5 %
quantile), which leaves out the air and its soft edge, and the body pixels (minus 0.5 % at the far
end) are cut into ``n_bins`` equal-count bins.

:func:`curve_deviation` compares a curve with the reference curve bin by bin: ratio = std / std_ref,
and the scalar is max |ratio − 1| over bins with at least ``min_pixels`` pixels in both (issue 29:
"within ±25 % of the target's over the body's signal range" is max |ratio − 1| <= 0.25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..translate.hallucination import binned_std, second_difference
from ._common import batches, check_images
from .physics import DEFAULT_SIGMA, highpass_residual

MIN_PIXELS = 500  # fewest pixels of a bin that enter the deviation (MAD std error ~ 1.1/sqrt(n))
CLIP_EPS = 1e-4  # a pixel within this of ±1 counts as clipped
BODY_FROM = 0.1  # the body starts this fraction of the way from the background to the far end


@dataclass(frozen=True)
class NoiseCurve:
    """Robust noise std per signal bin of one image set.

    Attributes:
        edges: (B + 1,) signal bin edges (intensity of the [-1, 1] scale).
        signal: (B,) median low-passed signal of the bin's pixels (nan where empty).
        std: (B,) robust noise std of the bin (1.4826·MAD of the second-difference residual;
            nan where empty).
        count: (B,) pixels in the bin.
        n_images: images pooled.
    """

    edges: np.ndarray
    signal: np.ndarray
    std: np.ndarray
    count: np.ndarray
    n_images: int

    def rows(self, name: str, reference: NoiseCurve | None = None) -> list[dict]:
        """One dict per bin (for a CSV): method, bin, lo, hi, signal, std, pixels, ratio."""
        ratio = self.std / reference.std if reference is not None else np.full_like(self.std,
                                                                                    np.nan)
        return [{"method": name, "bin": b, "lo": float(self.edges[b]),
                 "hi": float(self.edges[b + 1]), "signal": float(self.signal[b]),
                 "std": float(self.std[b]), "pixels": int(self.count[b]),
                 "ratio_to_target": float(ratio[b])} for b in range(len(self.std))]


def _residual_and_signal(x: torch.Tensor, sigma: float):
    """(r, s, ok) on the valid (H − 2, W − 2) grid of the second difference."""
    r = second_difference(x)
    s = (x - highpass_residual(x, sigma))[..., 1:-1, 1:-1]
    clipped = (x.abs() >= 1.0 - CLIP_EPS).to(x.dtype)
    ok = F.max_pool2d(clipped, 3, stride=1) == 0  # no clipped pixel in the 3 x 3 support
    return r, s, ok


def _pixels(images: torch.Tensor, sigma: float, batch_size: int):
    """Flat (residual, signal) of every unclipped pixel of the set (float32 numpy)."""
    images = check_images(images)
    if min(images.shape[-2:]) < 8:
        raise MedShiftError(f"noise curve needs images of at least 8x8, got {images.shape}")
    rs, ss = [], []
    for sl in batches(images.shape[0], batch_size):
        r, s, ok = _residual_and_signal(images[sl].float().cpu(), sigma)
        rs.append(r[ok].numpy())
        ss.append(s[ok].numpy())
    return np.concatenate(rs), np.concatenate(ss)


def _otsu(v: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def body_range(reference: torch.Tensor, sigma: float = DEFAULT_SIGMA,
               trim: float = 0.005) -> tuple[float, float]:
    """The body's low-passed signal range of an image set (air/background and the extreme
    ``trim`` fractions left out; see the module docstring)."""
    x = check_images(reference).float().cpu()
    _, s = _pixels(x, sigma, 64)
    if s.size < 100:
        raise MedShiftError("too few unclipped pixels to find the body's signal range")
    t = _otsu(s)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1).flatten()
    background_low = float((border < t).float().mean()) >= 0.5
    bg = s[s <= t] if background_low else s[s > t]
    b = float(np.median(bg))  # the background's level
    top = float(np.quantile(s, 1.0 - trim if background_low else trim))
    cut = b + BODY_FROM * (top - b)
    body = s[s > cut] if background_low else s[s < cut]
    if body.size < 100:
        raise MedShiftError("no body found: the images' signal is one flat background")
    lo, hi = np.quantile(body, [trim, 1.0 - trim])
    return float(lo), float(hi)


def signal_bins(reference: torch.Tensor, n_bins: int = 8, *, body: str | tuple = "auto",
                sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Equal-count signal bin edges over the reference set's body (or an explicit range).

    Args:
        reference: (N, 1, H, W) target-domain images in [-1, 1].
        n_bins: bins.
        body: "auto" (:func:`body_range`; every unclipped pixel when it finds no body),
            "all" (every unclipped pixel), or (lo, hi).
        sigma: low-pass std of the signal estimate (pixels).

    Returns:
        (n_bins + 1,) increasing edges.
    """
    if n_bins < 1:
        raise MedShiftError(f"n_bins must be >= 1, got {n_bins}")
    _, s = _pixels(reference, sigma, 64)
    if body == "auto":
        try:
            lo, hi = body_range(reference, sigma)
        except MedShiftError:  # no background to leave out (e.g. a crop of the body): all of it
            lo, hi = np.quantile(s, [0.005, 0.995])
    elif body == "all":
        lo, hi = np.quantile(s, [0.005, 0.995])
    else:
        lo, hi = (float(v) for v in body)
    if not hi > lo:
        raise MedShiftError(f"empty signal range ({lo}, {hi}) for the noise curve")
    inside = s[(s >= lo) & (s <= hi)]
    edges = np.quantile(inside, np.linspace(0.0, 1.0, n_bins + 1)) if inside.size > n_bins \
        else np.linspace(lo, hi, n_bins + 1)
    edges[0], edges[-1] = lo, hi
    if np.any(np.diff(edges) <= 0):  # ties (a flat image set): fall back to equal widths
        edges = np.linspace(lo, hi, n_bins + 1)
    return edges


def noise_curve(images: torch.Tensor, edges, *, sigma: float = DEFAULT_SIGMA,
                batch_size: int = 64) -> NoiseCurve:
    """The robust noise std of ``images`` in each signal bin (module docstring).

    Args:
        images: (N, 1, H, W) images in [-1, 1] (at least 8 x 8).
        edges: (B + 1,) increasing bin edges (:func:`signal_bins`).
        sigma: low-pass std of the signal estimate (pixels).
        batch_size: images per chunk.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise MedShiftError(f"edges must be an increasing 1-D array of >= 2 values, got {edges}")
    r, s = _pixels(images, sigma, batch_size)
    std, sig, cnt = binned_std(r, s, edges)
    return NoiseCurve(edges, sig, std, cnt, int(images.shape[0]))




def curve_deviation(curve: NoiseCurve, reference: NoiseCurve,
                    min_pixels: int = MIN_PIXELS) -> float:
    """max |std / std_ref − 1| over the bins with >= ``min_pixels`` pixels in both (nan if none).

    Raises:
        MedShiftError: the curves have different bins.
    """
    if curve.edges.shape != reference.edges.shape or not np.allclose(curve.edges,
                                                                     reference.edges):
        raise MedShiftError("noise curves have different signal bins; compute both with the "
                            "same edges (signal_bins of the target's images)")
    ok = (curve.count >= min_pixels) & (reference.count >= min_pixels) & (reference.std > 0)
    if not ok.any():
        return float("nan")
    dev = np.abs(curve.std[ok] / reference.std[ok] - 1.0)
    return float(dev.max()) if np.all(np.isfinite(dev)) else math.inf
