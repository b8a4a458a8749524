"""X-ray image formation: the idealised simulator chain (synthetic_*) and the physical one (real_*).

Both start from the two basis-material line integrals L = (L_soft, L_bone) (mm of water / of
cortical bone at unit density) of each detector sub-pixel, so all five domains of a view share
one projection and are pixel-aligned.

synthetic_* (a rendering engine, e.g. a VIST-like simulator):
    p = mu_w(E0) L_soft + mu_b(E0) L_bone          monochromatic at E0, no scatter, ideal pixel
    y = 2 * clip((p - lo) / (hi - lo))**gamma - 1 + N(0, s^2)    simulator LUT + Gaussian noise

real_* (a flat-panel C-arm):
    T   = sum_E w_E exp(-mu_w(E) L_soft - mu_b(E) L_bone)    polychromatic -> beam hardening
    T   <- G_focal * T                                       focal-spot unsharpness (pre-noise)
    S   = A * G_wide * (T ln(1/T))                          scatter-kernel superposition
    Phi = N0 * heel(v) * (T + S)                             photons / pixel; N0 sets the dose
    k   = G_det * Poisson(Phi) + N(0, sigma_e^2)             scintillator blur, electronic noise
    p   = ln(N0 / max(k, 0.5)),  y = 2 (p - lo) / (hi - lo) - 1      log transform, window
For a flat field (L = 0) this gives Var[y] = (2 / (hi - lo))^2 (sum(G_det^2) Phi + sigma_e^2)
/ Phi^2 to first order, which the tests check. Blur sizes and N0 are per *output* pixel, so a
dataset looks alike at every --size (noise stays visible at 64 px).

Attenuation: mass attenuation coefficients (cm^2/g) from the NIST XCOM / Hubbell-Seltzer tables
for liquid water and ICRU-44 cortical bone (1.92 g/cm^3). Spectrum: five bins approximating the
detected energy fluence of a ~75 kVp tungsten beam behind 2.5 mm Al.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ENERGIES_KEV = (30.0, 40.0, 50.0, 60.0, 80.0)
MU_RHO_WATER = (0.3756, 0.2683, 0.2269, 0.2059, 0.1837)  # cm^2/g, NIST
MU_RHO_BONE = (1.331, 0.6655, 0.4242, 0.3148, 0.2229)  # cm^2/g, NIST, ICRU-44 cortical bone
RHO_WATER, RHO_BONE = 1.0, 1.92  # g/cm^3
SPECTRUM_WEIGHTS = (0.10, 0.28, 0.30, 0.20, 0.12)


def mu_per_mm(kev: float) -> tuple[float, float]:
    """Linear attenuation (1/mm) of water and cortical bone at ``kev`` (log-log interpolation)."""
    e = np.log(ENERGIES_KEV)
    w = np.exp(np.interp(np.log(kev), e, np.log(MU_RHO_WATER))) * RHO_WATER / 10
    b = np.exp(np.interp(np.log(kev), e, np.log(MU_RHO_BONE))) * RHO_BONE / 10
    return float(w), float(b)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised discrete Gaussian (float64); sigma <= 0 gives the identity [1]."""
    if sigma <= 0:
        return torch.ones(1, dtype=torch.float64)
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) with reflect padding (sigma in pixels)."""
    k = gaussian_kernel1d(sigma).to(img.dtype)
    if k.numel() == 1:
        return img
    shp = img.shape
    x = img.reshape(-1, 1, *shp[-2:])
    r = k.numel() // 2
    r_h, r_w = min(r, shp[-2] - 1), min(r, shp[-1] - 1)
    kh = k[r - r_h: r + r_h + 1] / k[r - r_h: r + r_h + 1].sum()
    kw = k[r - r_w: r + r_w + 1] / k[r - r_w: r + r_w + 1].sum()
    x = F.conv2d(F.pad(x, (0, 0, r_h, r_h), mode="reflect"), kh.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (r_w, r_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1))
    return x.reshape(shp)


def noise_gain(sigma: float) -> float:
    """sum(G^2) of the 2-D separable kernel: the variance factor of blurred white noise."""
    k = gaussian_kernel1d(sigma)
    return float((k * k).sum()) ** 2


def area_pool(x: torch.Tensor, ss: int) -> torch.Tensor:
    """Average ss x ss blocks of (..., ss*S, ss*S) -> (..., S, S): the detector pixel integral."""
    if ss == 1:
        return x
    shp = x.shape
    return F.avg_pool2d(x.reshape(-1, 1, *shp[-2:]), ss).reshape(*shp[:-2], shp[-2] // ss,
                                                                   shp[-1] // ss)


def log_signal_mono(L: torch.Tensor, kev: float) -> torch.Tensor:
    """Monochromatic log signal p = mu_w L_soft + mu_b L_bone for L (..., 2)."""
    mw, mb = mu_per_mm(kev)
    return L[..., 0] * mw + L[..., 1] * mb


def transmission_poly(L: torch.Tensor) -> torch.Tensor:
    """Polychromatic transmitted fraction T = sum_E w_E exp(-mu(E) . L) for L (..., 2)."""
    w = torch.tensor(SPECTRUM_WEIGHTS, dtype=L.dtype)
    w = w / w.sum()
    mw = torch.tensor(MU_RHO_WATER, dtype=L.dtype) * RHO_WATER / 10
    mb = torch.tensor(MU_RHO_BONE, dtype=L.dtype) * RHO_BONE / 10
    return (torch.exp(-(L[..., :1] * mw + L[..., 1:] * mb)) * w).sum(-1)


def heel_profile(size: int, heel: float) -> torch.Tensor:
    """(S, 1) multiplicative anode-heel factor: 1 + heel at the top row, 1 - heel at the bottom."""
    v = 1.0 - (torch.arange(size, dtype=torch.float64) + 0.5) * (2.0 / size)  # +1 top, -1 bottom
    return (1.0 + heel * v)[:, None]


def synthetic_image(L_ss: torch.Tensor, ss: int, cfg, noise_std: float,
                    rng: np.random.Generator | None) -> torch.Tensor:
    """The simulator chain for one domain.

    Args:
        L_ss: (ss*S, ss*S, 2) line integrals on the supersampled grid.
        ss: supersampling factor.
        cfg: SimConfig (synthetic_kev, synthetic_window, synthetic_gamma).
        noise_std: Gaussian noise std in image units (None rng: noise-free).
        rng: numpy Generator for the noise.

    Returns:
        (S, S) float64 image in [-1, 1].
    """
    p = area_pool(log_signal_mono(L_ss, cfg.synthetic_kev), ss)
    lo, hi = cfg.synthetic_window
    y = 2.0 * ((p - lo) / (hi - lo)).clamp(0.0, 1.0) ** cfg.synthetic_gamma - 1.0
    if rng is not None and noise_std > 0:
        y = y + torch.from_numpy(rng.normal(0.0, noise_std, size=tuple(y.shape)))
    return y.clamp_(-1.0, 1.0)


def real_fluence(L_ss: torch.Tensor, ss: int, cfg) -> torch.Tensor:
    """Expected detected fluence per unattenuated photon, heel(v) (T + S), before noise.

    Args:
        L_ss: (ss*S, ss*S, 2) line integrals on the supersampled grid.
        ss: supersampling factor.
        cfg: SimConfig (focal_blur_px, scatter_amplitude, scatter_sigma_mm, fov, heel).

    Returns:
        (S, S) float64; multiply by N0 (photons / pixel) for the Poisson mean.
    """
    T = area_pool(transmission_poly(L_ss), ss)
    S = T.shape[-1]
    T = blur(T, cfg.focal_blur_px)
    if cfg.scatter_amplitude > 0:
        src = T * torch.log(1.0 / T.clamp(min=1e-12))
        m = min(S, 32)  # scatter is smooth: compute it on a coarse grid
        coarse = F.interpolate(src[None, None], size=(m, m), mode="area")
        coarse = blur(coarse, cfg.scatter_sigma_mm / (cfg.fov / m))
        sc = F.interpolate(coarse, size=(S, S), mode="bilinear", align_corners=False)[0, 0]
        T = T + cfg.scatter_amplitude * sc
    return heel_profile(S, cfg.heel) * T


def real_image(phi: torch.Tensor, photons: float, cfg,
               rng: np.random.Generator | None) -> torch.Tensor:
    """Detector + log + window for one dose.

    Args:
        phi: (S, S) relative fluence from :func:`real_fluence`.
        photons: N0, expected photons per pixel in an open (unattenuated, heel-free) field.
        cfg: SimConfig (detector_blur_px, electronic_noise, real_window).
        rng: numpy Generator (None: noise-free expectation).

    Returns:
        (S, S) float64 image in [-1, 1].
    """
    lam = phi * photons
    if rng is not None:
        k = torch.from_numpy(rng.poisson(lam.numpy()).astype(np.float64))
        k = blur(k, cfg.detector_blur_px)
        if cfg.electronic_noise > 0:
            k = k + torch.from_numpy(rng.normal(0.0, cfg.electronic_noise, size=tuple(k.shape)))
    else:
        k = blur(lam, cfg.detector_blur_px)
    p = torch.log(photons / k.clamp(min=0.5))
    lo, hi = cfg.real_window
    return (2.0 * (p - lo) / (hi - lo) - 1.0).clamp_(-1.0, 1.0)


def image_to_log_signal(img: torch.Tensor, domain: str, cfg) -> torch.Tensor:
    """Invert a domain's display mapping: image in [-1, 1] -> log signal p (inside the window)."""
    u = (img.double() + 1.0) / 2.0
    if domain.startswith("synthetic"):
        lo, hi = cfg.synthetic_window
        return lo + (hi - lo) * u.clamp(min=0.0) ** (1.0 / cfg.synthetic_gamma)
    lo, hi = cfg.real_window
    return lo + (hi - lo) * u
