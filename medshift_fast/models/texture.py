"""A detector noise model: the target domain's quantum mottle, fitted from its real images and
added to a student's noise-free translation (``medshift distill --texture detector``).

Why. A flat-panel image is a noise-free projection seen through the detector: photon (Poisson)
noise whose variance follows the local signal, blurred by the scintillator (so neighbouring
pixels are correlated), then the log transform. A one-step network asked to *produce* that
mottle from one source image either passes the source's own noise through or smooths it away;
a classifier on texture statistics tells either from a real image (docs/distill.md). Here the
network is asked for the noise-free image only, and the mottle is drawn from this model:

    y = c + a(c) · (k_sigma * n),        n ~ N(0, 1) per pixel (seeded per image)

where c is the network's translation, ``k_sigma`` a normalised Gaussian kernel (the detector's
noise correlation) and ``a`` a piecewise-linear function of the signal (the noise-vs-signal
curve). During distillation the discriminator sees c + noise against real images, so the
generator is pushed to make c the *clean* image under that noise (AmbientGAN, Bora et al.,
ICLR 2018: the measurement model inside the adversarial game).

Fitting (:meth:`DetectorNoise.fit`, unpaired: the target domain's training images only):

* residual r = Immerkær's second difference ([1, −2, 1]ᵀ ⊗ [1, −2, 1]) * x / 6 (annihilates
  anything affine, so smooth anatomy does not enter), signal s = Gaussian low-pass (std 1.5 px);
  pixels whose 3 x 3 support touches a clipped value are left out;
* ``a``: in ``bins`` equal-count bins of s, the robust std 1.4826·MAD of r over the flatter
  half of the bin's pixels (the lower half of a 2-px low-pass's gradient: busy anatomy has a
  second difference of its own), divided by the std
  that the second difference gives for unit noise through ``k_sigma`` (so the model's noise has
  the measured residual std exactly), knots at the bins' median signal;
* ``sigma``: the robust lag-1 correlation of r (from the MADs of the sums and differences of
  horizontal and vertical neighbours) on the flattest ``flat`` fraction of pixels (lowest
  gradient of a 2-px low-pass: edges correlate r too), matched by a grid search over sigma to
  the closed-form correlation of the second difference of k_sigma-filtered white noise.

On the simulator's real domains (Poisson, detector blur 0.5 px, read noise) the fit returns
sigma = 0.5, and the noise-free expectation plus this model's noise is told from real images by
the C2ST no better than real from real (docs/distill.md "The detector noise model").

Everything applied at translation time is elementwise or a small convolution (no look-up, no
data-dependent control flow), so a student with this model exports to ONNX unchanged; its halo
grows to the kernel's radius at most (the noise maps are tiled like the image).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedShiftError

__all__ = ["DetectorNoise", "TEXTURES"]

TEXTURES = ("none", "detector")
SIGNAL_SIGMA = 1.5  # px, the low-pass that estimates the local signal of a noisy image
FLAT_SIGMA = 2.0  # px, the low-pass whose gradient finds the flat pixels
CLIP_EPS = 1e-4
MIN_BIN_PIXELS = 400  # fewest pixels per signal bin (the MAD's std error ~ 1.1 / sqrt(n))
SIGMA_GRID = np.round(np.arange(0.0, 2.0001, 0.0125), 4)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """The simulator's normalised discrete Gaussian (``data.physics``, radius ceil(3 sigma),
    float64); sigma < 0.05 (a kernel within round-off of the identity): [1]."""
    from ..data.physics import gaussian_kernel1d as kernel

    return kernel(sigma if sigma >= 0.05 else 0.0)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of (N, 1, H, W) with reflect padding."""
    k = gaussian_kernel1d(sigma).to(x.dtype)
    r = k.numel() // 2
    if r == 0:
        return x
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _second_difference(x: torch.Tensor) -> torch.Tensor:
    d2 = torch.tensor([1.0, -2.0, 1.0], dtype=x.dtype, device=x.device)
    return F.conv2d(x, torch.outer(d2, d2).view(1, 1, 3, 3)) / 6.0


@functools.cache  # a pure function of sigma, asked for the whole grid per fit
def _filter_stats(sigma: float) -> tuple[float, float]:
    """(std, lag-1 correlation) of the second difference of unit white noise through k_sigma
    (closed form: the combined filter's norm and autocorrelation)."""
    k = gaussian_kernel1d(sigma)
    k2 = torch.outer(k, k)
    d2 = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64)
    f = F.conv2d(F.pad(k2, (2, 2, 2, 2))[None, None],
                 torch.outer(d2, d2).view(1, 1, 3, 3) / 6.0)[0, 0]
    energy = float((f * f).sum())
    lag = float((f[:, 1:] * f[:, :-1]).sum())
    return math.sqrt(energy), lag / energy


def _mad_std(v: torch.Tensor) -> float:
    v = v.double()
    return float(1.4826 * (v - v.median()).abs().median())


def _robust_lag1(r: torch.Tensor) -> float:
    """Lag-1 correlation of r (flattened neighbour pairs, NaN = excluded) from the robust stds
    of sums and differences: (S² − D²) / (S² + D²)."""
    pairs = [(r[..., :, 1:], r[..., :, :-1]), (r[..., 1:, :], r[..., :-1, :])]
    s = torch.cat([(a + b).flatten() for a, b in pairs])
    d = torch.cat([(a - b).flatten() for a, b in pairs])
    ok = torch.isfinite(s) & torch.isfinite(d)
    s, d = _mad_std(s[ok]), _mad_std(d[ok])
    return (s * s - d * d) / max(s * s + d * d, 1e-30)


@dataclass(frozen=True)
class DetectorNoise:
    """Signal-dependent, spatially correlated noise of one target domain (module docstring).

    Attributes:
        sigma: std (px) of the Gaussian noise-correlation kernel (0: white).
        knots: increasing signal values (image scale, [-1, 1]) of the amplitude curve.
        amp: the noise amplitude at each knot (constant beyond the end knots).
        residual_std: the target's measured robust second-difference std at each knot.
        own_std: after :meth:`top_up`, the student's own residual std at each knot (what its
            noise-free translations still carry; the amplitude adds only what is missing).
    """

    sigma: float
    knots: tuple[float, ...]
    amp: tuple[float, ...]
    residual_std: tuple[float, ...] = field(default=())
    own_std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "knots", tuple(float(v) for v in self.knots))
        object.__setattr__(self, "amp", tuple(float(v) for v in self.amp))
        object.__setattr__(self, "residual_std", tuple(float(v) for v in self.residual_std))
        object.__setattr__(self, "own_std", tuple(float(v) for v in self.own_std))
        k, a = np.asarray(self.knots), np.asarray(self.amp)
        if (not math.isfinite(self.sigma) or not 0.0 <= self.sigma <= 3.0 or k.size < 1
                or k.size != a.size or not np.all(np.isfinite(k)) or not np.all(np.isfinite(a))
                or np.any(a < 0) or np.any(np.diff(k) <= 0)):
            raise MedShiftError("a detector noise model needs 0 <= sigma <= 3 and as many "
                                "finite, non-negative amplitudes as strictly increasing knots; "
                                "refit it (`medshift distill --texture detector`)")

    # ------------------------------------------------------------------------------ format
    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "knots": list(self.knots), "amp": list(self.amp),
                "residual_std": list(self.residual_std), "own_std": list(self.own_std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorNoise:
        try:
            return cls(d["sigma"], d["knots"], d["amp"], d.get("residual_std", ()),
                       d.get("own_std", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise MedShiftError(f"bad detector noise model in the run's config ({exc}); refit "
                                "it (`medshift distill --texture detector`)") from exc

    # ------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, images: torch.Tensor, bins: int = 16, flat: float = 0.2,
            max_pixels: int = 1 << 22) -> DetectorNoise:
        """Fit the model to real images of one domain (module docstring).

        Args:
            images: (N, 1, H, W) images in [-1, 1] (at least 8 x 8).
            bins: equal-count signal bins of the amplitude curve (fewer when the images have
                under ``MIN_BIN_PIXELS`` unclipped pixels per bin).
            flat: fraction of the flattest pixels the correlation is measured on.
            max_pixels: at most this many pixels enter each statistic (an even subsample).

        Raises:
            MedShiftError: not (N, 1, H, W), too small, NaN, or too few unclipped pixels.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
            raise MedShiftError("the detector noise model is fitted to (N, 1, H, W) images, got "
                                f"{tuple(getattr(images, 'shape', ()))}")
        if min(images.shape[-2:]) < 8:
            raise MedShiftError(f"images of {tuple(images.shape[-2:])} px are too small to fit a "
                                "noise model (at least 8 x 8)")
        x = images.detach().double().cpu()
        if not bool(torch.isfinite(x).all()):
            raise MedShiftError("the images a noise model is fitted to contain NaN or Inf")
        r = _second_difference(x)
        s = _blur(x, SIGNAL_SIGMA)[..., 1:-1, 1:-1]
        low = _blur(x, FLAT_SIGMA)
        grad = torch.hypot(low[..., 1:-1, 2:] - low[..., 1:-1, :-2],
                           low[..., 2:, 1:-1] - low[..., :-2, 1:-1])
        clipped = (x.abs() >= 1.0 - CLIP_EPS).double()
        ok = F.max_pool2d(clipped, 3, stride=1) == 0
        if int(ok.sum()) < MIN_BIN_PIXELS:
            raise MedShiftError(f"too few unclipped pixels ({int(ok.sum())}) to fit a noise "
                                f"model (at least {MIN_BIN_PIXELS}); give more images")
        bins = max(1, min(int(bins), int(ok.sum()) // MIN_BIN_PIXELS))  # few pixels: fewer bins
        step = max(1, int(ok.sum()) // max_pixels)
        rv, sv, gv = r[ok][::step], s[ok][::step], grad[ok][::step]
        edges = torch.quantile(sv[::max(1, sv.numel() // (1 << 20))],
                               torch.linspace(0, 1, bins + 1, dtype=torch.float64))
        idx = torch.bucketize(sv, edges[1:-1])
        knots, res = [], []
        for b in range(bins):
            m = idx == b
            if int(m.sum()) >= MIN_BIN_PIXELS // 2:
                knots.append(float(sv[m].median()))
                calm = gv[m] <= gv[m].median()  # the flatter half: anatomy's own 2nd difference out
                res.append(_mad_std(rv[m][calm]))
        # the correlation, on the flattest unclipped pixels
        g = torch.where(ok, grad, torch.full_like(grad, float("nan")))
        gv = g[torch.isfinite(g)]
        thr = torch.quantile(gv[::max(1, gv.numel() // (1 << 20))], flat)
        rho = _robust_lag1(torch.where(ok & (grad <= thr), r, torch.full_like(r, float("nan"))))
        stats = {float(sg): _filter_stats(float(sg)) for sg in SIGMA_GRID}
        sigma = min(stats, key=lambda sg: abs(stats[sg][1] - rho))
        unit = stats[sigma][0]
        knots, res = _dedupe(knots, res)
        return cls(sigma, knots, [v / unit for v in res], res)

    def top_up(self, own: torch.Tensor) -> DetectorNoise:
        """This model, adding only the noise the images ``own`` lack: ``own`` are a student's
        noise-free translations (N, 1, H, W) of training images; its residual std r_own per
        signal (the same estimator as :meth:`fit`) is subtracted in variance from the
        target's, a = sqrt(max(r_t² − r_own², 0)) / unit. Where the student already carries
        the target's noise level nothing is added (where it carries more, nothing can be taken
        away: ``own_std`` records it)."""
        if not self.residual_std:
            raise MedShiftError("this noise model records no measured residual std; refit it")
        mine = DetectorNoise.fit(own)
        r_own = np.interp(self.knots, mine.knots, mine.residual_std)
        add = np.sqrt(np.maximum(np.square(self.residual_std) - np.square(r_own), 0.0))
        unit = _filter_stats(self.sigma)[0]
        return DetectorNoise(self.sigma, self.knots, add / unit, self.residual_std, r_own)

    # ---------------------------------------------------------------------------- applying
    @property
    def radius(self) -> int:
        """Pixels of the noise map the noise at one output pixel reads (the halo it adds)."""
        return gaussian_kernel1d(self.sigma).numel() // 2

    def amplitude(self, c: torch.Tensor) -> torch.Tensor:
        """a(c): piecewise linear through (knots, amp), constant beyond the ends (elementwise:
        a sum of clamped ramps, so it traces and exports)."""
        return self._curve(c, self.amp)

    def measured_std(self, c: torch.Tensor) -> torch.Tensor:
        """The target's measured residual std at signal c (the curve ``fit`` recorded, before
        any top-up), piecewise linear like :meth:`amplitude`."""
        if not self.residual_std:
            raise MedShiftError("this noise model records no measured residual std; refit it")
        return self._curve(c, self.residual_std)

    def _curve(self, c: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
        out = torch.full_like(c, values[0])
        for i in range(len(self.knots) - 1):
            x0, x1 = self.knots[i], self.knots[i + 1]
            slope = (values[i + 1] - values[i]) / (x1 - x0)
            out = out + slope * (c.clamp(x0, x1) - x0)
        return out

    def correlate(self, n: torch.Tensor) -> torch.Tensor:
        """k_sigma * n for (B, 1, H, W) standard-normal maps (reflect padding; an image's border
        pixels get the same noise statistics as a tile's)."""
        return _blur(n, self.sigma)

    def noise(self, clean: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The model's noise for the noise-free images ``clean`` (B, C, H, W) from the maps
        ``n`` (B, 1, H, W): a(clean) · (k_sigma * n) (every channel gets the same field)."""
        return self.amplitude(clean) * self.correlate(n.to(clean.dtype))

    def describe(self) -> str:
        """One line for logs and reports."""
        return (f"detector noise: correlation sigma {self.sigma:g} px, amplitude "
                f"{min(self.amp):.4g}..{max(self.amp):.4g} over signal "
                f"{self.knots[0]:.3f}..{self.knots[-1]:.3f} ({len(self.knots)} knots)")


def _dedupe(knots: list[float], vals: list[float]) -> tuple[list[float], list[float]]:
    """Strictly increasing knots (ties, e.g. a clipped or flat set: averaged)."""
    out_k, out_v = [], []
    for k, v in sorted(zip(knots, vals)):
        if out_k and k <= out_k[-1] + 1e-9:
            out_v[-1] = 0.5 * (out_v[-1] + v)
            continue
        out_k.append(k)
        out_v.append(v)
    if not out_k:
        raise MedShiftError("no signal bin has enough pixels to fit a noise model; give more "
                            "images")
    return out_k, out_v
