"""X-ray physics metrics: noise level, noise power spectrum (NPS) and intensity histograms.

Noise on anatomical images (no flat-field exposures available) is measured on the high-pass
residual  r = x − G_sigma * x  (G_sigma: normalised, truncated discrete Gaussian, reflect padding).
Anatomy is smooth at the pixel scale except at edges, so r is dominated by quantum/electronic noise.

- :func:`noise_level` is a robust std (1.4826·MAD by default, so sparse edge pixels do not count)
  of a high-pass residual divided by the filter's white-noise gain, so white noise of std s reads
  ≈ s. Default residual ("diff2", after Immerkær 1996): the separable second difference
  [1, −2, 1]ᵀ ⊗ [1, −2, 1] (gain 6), which annihilates anything affine along x or along y, so smooth
  anatomy leaks far less than into x − G_sigma * x (on 32x32 smooth phantoms: ~1e-4 vs ~2e-2).
  It weights high frequencies: blurred (correlated) noise reads below its total std — compare
  images with each other (:func:`noise_ratio`), and use the NPS for the full picture.
- :func:`noise_power_spectrum` is the 2-D periodogram |FFT(r)|² / (H·W), averaged over images,
  divided by the filter's power transfer |1 − Ĝ(f)|² (so it estimates the NPS of the image noise,
  not of the filter) and radially averaged. Only frequencies where that transfer is at least
  ``min_gain`` (default 0.25, i.e. f >= 0.187/sigma cycles/pixel, 0.125 for sigma 1.5) up to
  Nyquist (0.5) are reported: below, the residual carries little noise and the division would
  amplify anatomy. Units: intensity² of the [-1, 1] scale × pixel² (pixel spacing 1). White
  noise of variance v gives a flat NPS at v.
- :func:`nps_distance` is the RMS over frequency bins of 10·log10(NPS_a / NPS_b) in dB (0 when
  equal; grows with any difference in noise magnitude or texture).
- :func:`histogram_distance` compares pooled pixel-intensity distributions (Wasserstein-1 or χ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..translate.hallucination import second_difference
from ._common import batches, check_images

DEFAULT_SIGMA = 1.5


def _gauss1d(sigma: float, dtype=torch.float64) -> torch.Tensor:
    if not sigma > 0:
        raise MedShiftError(f"sigma must be > 0, got {sigma}")
    r = max(1, math.ceil(3.0 * sigma))
    k = torch.arange(-r, r + 1, dtype=dtype)
    g = torch.exp(-0.5 * (k / sigma) ** 2)
    return g / g.sum()


def highpass_residual(x: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """r = x − G_sigma * x, separable Gaussian with reflect padding.

    Args:
        x: (N, 1, H, W) images.
        sigma: Gaussian std in pixels (kernel radius ceil(3·sigma)).

    Returns:
        (N, 1, H, W) residual, same dtype as x.
    """
    x = check_images(x)
    g = _gauss1d(sigma).to(x.device, x.dtype)
    r = g.numel() // 2
    if min(x.shape[-2:]) <= r:
        raise MedShiftError(
            f"images of {tuple(x.shape[-2:])} pixels are too small for the sigma={sigma} high-pass "
            f"(needs > {r} pixels per side); use a smaller sigma"
        )
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1))
    y = F.conv2d(y, g.view(1, 1, -1, 1))
    return x - y




def _white_gain(sigma: float) -> float:
    """sqrt(Σ (δ − g2d)²): std of the residual of unit white noise."""
    g = _gauss1d(sigma)
    g2 = torch.outer(g, g)
    c = g.numel() // 2
    return math.sqrt(float(1.0 - 2.0 * g2[c, c] + g2.square().sum()))


def noise_level(
    images: torch.Tensor,
    *,
    method: Literal["diff2", "gaussian"] = "diff2",
    sigma: float = DEFAULT_SIGMA,
    robust: bool = True,
    reduction: Literal["none", "mean"] = "none",
    batch_size: int = 256,
    progress: bool | str = False,
) -> torch.Tensor:
    """Per-image noise std from a high-pass residual, in [-1, 1] intensity units.

    Args:
        images: (N, 1, H, W) images in [-1, 1] (at least 3x3).
        method: "diff2" -> separable second difference (valid region, / 6); "gaussian" ->
            x − G_sigma * x (/ its white-noise gain). See the module docstring.
        sigma: high-pass Gaussian std in pixels (method "gaussian" only).
        robust: 1.4826·MAD of the residual (ignores sparse edges) instead of its plain std.
        reduction: "none" -> (N,), "mean" -> scalar.
        batch_size: images per chunk.
        progress: tqdm bar (True or a description).

    Returns:
        (N,) or scalar float32 tensor; ≈ s for white Gaussian noise of std s.
    """
    images = check_images(images)
    if method == "diff2":
        if min(images.shape[-2:]) < 3:
            raise MedShiftError(f"noise_level needs images of at least 3x3, got {images.shape}")
        gain = 1.0  # second_difference is already scaled to white noise
    elif method == "gaussian":
        gain = _white_gain(sigma)
    else:
        raise MedShiftError(f"method must be 'diff2' or 'gaussian', got {method!r}")
    out = []
    for sl in batches(images.shape[0], batch_size, progress):
        x = images[sl].float()
        r = second_difference(x) if method == "diff2" else highpass_residual(x, sigma)
        r = r.flatten(1)
        if robust:
            med = r.median(dim=1, keepdim=True).values
            s = 1.4826 * (r - med).abs().median(dim=1).values
        else:
            s = r.std(dim=1)
        out.append(s / gain)
    v = torch.cat(out)
    if reduction == "mean":
        return v.mean()
    if reduction != "none":
        raise MedShiftError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    return v


def noise_ratio(a: torch.Tensor, b: torch.Tensor, **kwargs) -> float:
    """mean noise_level(a) / mean noise_level(b) (1.0 = a reproduces b's noise magnitude)."""
    return float(
        noise_level(a, reduction="mean", **kwargs) / noise_level(b, reduction="mean", **kwargs)
    )


@dataclass(frozen=True)
class NPS:
    """Radially averaged noise power spectrum.

    Attributes:
        freqs: (B,) bin centres in cycles/pixel.
        nps: (B,) power per bin (intensity² · pixel²), float64.
        n_images: how many images were averaged.
        image_size: (H, W) of those images.
    """

    freqs: torch.Tensor
    nps: torch.Tensor
    n_images: int
    image_size: tuple[int, int]


def _band(sigma: float, min_gain: float) -> float:
    """Lowest radial frequency where the continuous high-pass power transfer reaches min_gain."""
    if not 0.0 < min_gain < 1.0:
        raise MedShiftError(f"min_gain must be in (0, 1), got {min_gain}")
    # |1 − exp(−2π²σ²f²)|² >= min_gain  <=>  f >= sqrt(−ln(1 − sqrt(min_gain)) / (2π²σ²))
    return math.sqrt(-math.log(1.0 - math.sqrt(min_gain)) / (2.0 * math.pi**2 * sigma**2))


def noise_power_spectrum(
    images: torch.Tensor,
    *,
    sigma: float | None = DEFAULT_SIGMA,
    n_bins: int | None = None,
    min_gain: float = 0.25,
    batch_size: int = 256,
    progress: bool | str = False,
) -> NPS:
    """Radially averaged NPS of the high-pass residual, compensated for the filter (see module doc).

    Args:
        images: (N, 1, H, W) images in [-1, 1].
        sigma: high-pass Gaussian std; None -> no high-pass, plain mean-subtracted periodogram over
            (0, 0.5] (only meaningful for flat-field / noise-only images).
        n_bins: radial bins; None -> about one per frequency step 1/min(H, W) (between 4 and 32).
        min_gain: lowest filter power transfer that is still reported (sets the low-frequency end).
        batch_size: images per chunk.
        progress: tqdm bar (True or a description).

    Returns:
        :class:`NPS` with (n_bins,) freqs and nps (empty bins are dropped).
    """
    images = check_images(images)
    n, _, h, w = images.shape
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1)
    rad = torch.sqrt(fy**2 + fx**2)
    if sigma is None:
        f_lo, transfer = 0.0, torch.ones_like(rad)
    else:
        g = _gauss1d(sigma)
        k = torch.arange(g.numel(), dtype=torch.float64) - g.numel() // 2

        def resp(f: torch.Tensor) -> torch.Tensor:  # DTFT of the symmetric 1-D kernel
            return (g * torch.cos(2 * math.pi * f * k)).sum(-1, keepdim=True)

        transfer = (1.0 - resp(fy.view(-1, 1)).view(-1, 1) * resp(fx.view(-1, 1)).view(1, -1)) ** 2
        f_lo = _band(sigma, min_gain)
    if f_lo >= 0.5:
        raise MedShiftError(f"sigma={sigma} leaves no frequency band to measure; use larger sigma")
    if n_bins is None:
        n_bins = int(min(32, max(4, round((0.5 - f_lo) * min(h, w)))))
    edges = torch.linspace(f_lo, 0.5, n_bins + 1, dtype=torch.float64)
    valid = (rad > f_lo) & (rad <= 0.5) & (transfer >= min_gain * (1 - 1e-9))
    if sigma is None:
        valid &= rad > 0
    idx = torch.bucketize(rad, edges, right=False).clamp(1, n_bins) - 1

    acc = torch.zeros(h, w, dtype=torch.float64)
    for sl in batches(n, batch_size, progress):
        x = images[sl].to(torch.float64)
        r = highpass_residual(x, sigma) if sigma is not None else x
        r = r - r.mean(dim=(-2, -1), keepdim=True)
        p = torch.fft.fft2(r[:, 0]).abs().square() / (h * w)
        acc += p.sum(0).cpu()
    p2d = acc / n / transfer.clamp_min(1e-12)

    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx[valid], p2d[valid])
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(
        0, idx[valid], torch.ones_like(p2d[valid])
    )
    keep = counts > 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    return NPS(centres[keep], sums[keep] / counts[keep], n, (h, w))


def nps_distance(
    a: torch.Tensor | NPS,
    b: torch.Tensor | NPS,
    *,
    metric: Literal["log", "l2"] = "log",
    sigma: float | None = DEFAULT_SIGMA,
    n_bins: int | None = None,
    batch_size: int = 256,
    progress: bool | str = False,
) -> float:
    """Distance between the radial NPS curves of two image sets (or two precomputed :class:`NPS`).

    Args:
        a: (N_a, 1, H, W) images or an NPS.
        b: (N_b, 1, H, W) images or an NPS; same H, W (the bins must match).
        metric: "log" -> RMS over bins of 10·log10(NPS_a / NPS_b) in dB; "l2" -> relative L2
            ||NPS_a − NPS_b|| / ||NPS_b||.
        sigma, n_bins, batch_size, progress: passed to :func:`noise_power_spectrum`.

    Returns:
        A float >= 0; 0 for identical sets.
    """
    kw = dict(sigma=sigma, n_bins=n_bins, batch_size=batch_size, progress=progress)
    pa = a if isinstance(a, NPS) else noise_power_spectrum(a, **kw)
    pb = b if isinstance(b, NPS) else noise_power_spectrum(b, **kw)
    if pa.freqs.shape != pb.freqs.shape or not torch.allclose(pa.freqs, pb.freqs):
        raise MedShiftError(
            f"NPS curves have different frequency bins (images {pa.image_size} vs "
            f"{pb.image_size}); compare image sets of the same size with the same sigma / n_bins"
        )
    tiny = torch.finfo(torch.float64).tiny
    if metric == "log":
        ratio = 10.0 * torch.log10(pa.nps.clamp_min(tiny) / pb.nps.clamp_min(tiny))
        return float(ratio.square().mean().sqrt())
    if metric == "l2":
        return float((pa.nps - pb.nps).norm() / pb.nps.norm().clamp_min(tiny))
    raise MedShiftError(f"metric must be 'log' or 'l2', got {metric!r}")


def _histogram(x: torch.Tensor, bins: int, lo: float, hi: float, batch_size: int, progress):
    counts = torch.zeros(bins, dtype=torch.float64)
    for sl in batches(x.shape[0], batch_size, progress):
        v = x[sl].detach().float().clamp(lo, hi)  # out-of-range pixels land in the end bins
        counts += torch.histc(v, bins=bins, min=lo, max=hi).double().cpu()
    return counts / counts.sum()


def histogram_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    metric: Literal["wasserstein", "chi2"] = "wasserstein",
    bins: int = 256,
    value_range: tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 256,
    progress: bool | str = False,
) -> float:
    """Distance between the pooled pixel-intensity histograms of two image sets.

    Args:
        a: (N_a, C, H, W) images in [-1, 1] (sizes may differ from b).
        b: (N_b, C, H, W) images.
        metric: "wasserstein" -> W1 = Σ |CDF_a − CDF_b|·Δ in intensity units of the [-1, 1] scale
            (mean absolute shift of the intensity quantiles);
            "chi2" -> ½ Σ (p − q)² / (p + q), in [0, 1].
        bins: histogram bins over value_range.
        value_range: histogram range; pixels outside are clamped into the end bins.
        batch_size, progress: batching and tqdm bar.

    Returns:
        A float >= 0; 0 for identical sets.
    """
    a = check_images(a, "a", channels=None)
    b = check_images(b, "b", channels=None)
    lo, hi = value_range
    if not hi > lo or bins < 2:
        raise MedShiftError(f"need value_range hi > lo and bins >= 2, got {value_range}, {bins}")
    p = _histogram(a, bins, lo, hi, batch_size, progress)
    q = _histogram(b, bins, lo, hi, batch_size, progress)
    if metric == "wasserstein":
        return float((p.cumsum(0) - q.cumsum(0)).abs().sum() * (hi - lo) / bins)
    if metric == "chi2":
        s = p + q
        m = s > 0
        return float(0.5 * ((p[m] - q[m]).square() / s[m]).sum())
    raise MedShiftError(f"metric must be 'wasserstein' or 'chi2', got {metric!r}")
