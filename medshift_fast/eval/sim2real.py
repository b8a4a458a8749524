"""The classical sim-to-real routes a practitioner tries before a learned translation.

**(a) Histogram matching + measured noise + detector blur** (:class:`MatchNoiseBlur`). Fitted on
the *validation* split only (the source domain's val images and the target domain's val images,
unpaired: no alignment, no labels), then applied to any set of source images:

1. intensity: ``skimage.exposure.match_histograms`` of the pooled pixels of the set to the pooled
   pixels of the target val images (one monotone intensity map per set: the display chain is
   global, so the map is too);
2. detector blur: a Gaussian of sigma ``blur`` pixels (the only free parameter);
3. noise drawn to the target domain's *measured* level: the noise-vs-signal curve s_T(u) of the
   target val images (``noise_curve``: the robust std of the second difference in ``N_BINS``
   bins of the local signal u, over the whole signal range) minus the curve of the processed
   images, added as white noise through the same detector blur, scaled so that the processed
   images read s_T(u) on the same measure (signal-dependent, as quantum noise is).

``blur`` is chosen from ``BLUR_GRID`` by the smallest NPS distance (``physics.nps_distance``)
between the processed source val images and the target val images.

**(b) Strong domain randomisation** (:func:`randomize`), applied on the fly during downstream
training (SyntheX, Gao et al., Nature Machine Intelligence 2023: random contrast / gamma /
window, inversion, noise, blur, cut-outs): fixed published-style ranges (``DR``), nothing fitted
to the target domain. Cut-outs are excluded from the loss (their labels are unknowable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import MedShiftError

BLUR_GRID = (0.0, 0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0)
N_BINS = 16
LOCAL_MEAN_SIGMA = 2.0  # px: the local signal level a pixel's noise is binned by

# Domain-randomisation ranges (image in [0, 1]); p_* are probabilities per training sample.
DR = {
    "window_lo": (-0.15, 0.25), "window_hi": (0.75, 1.15), "gamma": (0.5, 2.0),
    "p_invert": 0.2, "p_blur": 0.5, "blur": (0.3, 1.5), "p_noise": 0.8, "noise": (0.0, 0.06),
    "p_cutout": 0.5, "cutouts": (1, 3), "cutout_frac": (0.06, 0.25),
}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), reflect padding; sigma <= 0: identity."""
    from ..data.physics import blur

    return x if sigma <= 0 else blur(x.double(), sigma).to(x.dtype)


def local_signal(x: torch.Tensor) -> torch.Tensor:
    """The local signal u of every pixel (the low-pass of ``noise_curve``'s signal axis)."""
    from .physics import highpass_residual

    return x - highpass_residual(x, LOCAL_MEAN_SIGMA)


def match_histograms(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The pooled pixels of ``x`` (N, 1, H, W) matched to those of ``reference`` (skimage)."""
    from skimage.exposure import match_histograms as skm

    y = skm(x.double().numpy().reshape(-1), reference.double().numpy().reshape(-1))
    return torch.from_numpy(np.asarray(y).reshape(x.shape)).float()


@dataclass
class MatchNoiseBlur:
    """Route (a), fitted by :meth:`fit` (module docstring).

    Attributes:
        reference: target-domain val images (histogram reference), (M, 1, H, W).
        blur: detector blur sigma in pixels.
        edges: local-mean bin edges.
        target_curve: s_T per bin (target val images).
        gain: second-difference reading of unit white noise after the blur.
        curve: the NPS distance (dB) of every blur tried, {blur: dB}.
        split: the split it was fitted on.
    """

    reference: torch.Tensor
    blur: float = 0.0
    edges: np.ndarray = field(default_factory=lambda: np.linspace(-1, 1, N_BINS + 1))
    target_curve: np.ndarray | None = None
    gain: float = 1.0
    curve: dict = field(default_factory=dict)
    split: str = "val"

    @classmethod
    def fit(cls, src_val: torch.Tensor, tgt_val: torch.Tensor, split: str = "val",
            grid=BLUR_GRID, seed: int = 0) -> MatchNoiseBlur:
        """Fit on unpaired val images of the source (``src_val``) and target (``tgt_val``)."""
        from .noise_curve import signal_bins
        from .physics import noise_power_spectrum, nps_distance

        if src_val.shape[0] < 1 or tgt_val.shape[0] < 1:
            raise MedShiftError("the histogram/noise/blur baseline needs validation images of "
                                "both domains")
        edges = signal_bins(tgt_val, N_BINS, body="all", sigma=LOCAL_MEAN_SIGMA)
        m = cls(tgt_val.float(), edges=edges, target_curve=_curve(tgt_val, edges), split=split)
        nps_t = noise_power_spectrum(tgt_val)
        best = None
        for s in grid:
            cand = cls(m.reference, float(s), edges, m.target_curve, split=split)
            cand.gain = _white_gain(float(s))
            y = cand.apply(src_val, seed=seed)
            d = nps_distance(y, nps_t)
            m.curve[float(s)] = d
            if best is None or d < best[0]:
                best = (d, float(s))
        m.blur = best[1]
        m.gain = _white_gain(m.blur)
        return m

    def apply(self, x: torch.Tensor, seed: int = 0, generators=None) -> torch.Tensor:
        """(N, 1, H, W) source images -> processed images in [-1, 1] (noise per image from
        ``generators`` or generators seeded by (seed, index))."""
        y = gaussian_blur(match_histograms(x, self.reference), self.blur)
        have = _curve(y, self.edges)
        add = np.sqrt(np.clip(self.target_curve ** 2 - np.nan_to_num(have) ** 2, 0.0, None))
        add = np.nan_to_num(add) / max(self.gain, 1e-12)
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        u = local_signal(y.double())
        s = torch.from_numpy(np.interp(u.numpy(), centres, add)).float()
        gens = generators or [torch.Generator().manual_seed(seed * 1_000_003 + i)
                              for i in range(x.shape[0])]
        eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
        return (y + s * gaussian_blur(eps, self.blur)).clamp(-1.0, 1.0)

    def to_dict(self) -> dict:
        return {"method": "histogram matching + measured noise + detector blur",
                "fitted_on": self.split, "blur_px": self.blur,
                "nps_distance_db_by_blur": {f"{k:g}": round(v, 4) for k, v in self.curve.items()},
                "noise_curve_target": [None if not math.isfinite(v) else round(float(v), 5)
                                       for v in self.target_curve]}


def _curve(x: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """The noise-vs-signal curve's stds (``noise_curve``; nan in empty bins)."""
    from .noise_curve import noise_curve

    return noise_curve(x, edges, sigma=LOCAL_MEAN_SIGMA).std


def _white_gain(sigma: float) -> float:
    """The second-difference noise reading of unit white noise after a Gaussian blur."""
    from .physics import second_difference

    g = torch.Generator().manual_seed(0)
    e = torch.randn(1, 1, 256, 256, generator=g, dtype=torch.float64)
    r = second_difference(gaussian_blur(e, sigma)).flatten()
    return float(1.4826 * (r - r.median()).abs().median())


def randomize(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Strong domain randomisation of a batch (module docstring, ranges in ``DR``).

    Args:
        x: (B, 1, H, W) images in [-1, 1].
        g: the training run's generator (all draws come from it).

    Returns:
        (augmented images (B, 1, H, W) in [-1, 1], loss weights (B, 1, H, W): 0 in cut-outs).
    """
    def u(lo, hi, n=1):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    out, weights = [], []
    for i in range(x.shape[0]):
        v = (x[i:i + 1] + 1.0) / 2.0
        lo, hi = float(u(*DR["window_lo"])), float(u(*DR["window_hi"]))
        v = ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        v = v ** float(torch.exp(u(math.log(DR["gamma"][0]), math.log(DR["gamma"][1]))))
        if float(u(0, 1)) < DR["p_invert"]:
            v = 1.0 - v
        if float(u(0, 1)) < DR["p_blur"]:
            v = gaussian_blur(v, float(u(*DR["blur"])))
        if float(u(0, 1)) < DR["p_noise"]:
            v = v + float(u(*DR["noise"])) * torch.randn(v.shape, generator=g)
        w = torch.ones_like(v)
        if float(u(0, 1)) < DR["p_cutout"]:
            h, wd = v.shape[-2:]
            n = int(torch.randint(DR["cutouts"][0], DR["cutouts"][1] + 1, (1,), generator=g))
            for _ in range(n):
                bh = max(1, int(float(u(*DR["cutout_frac"])) * h))
                bw = max(1, int(float(u(*DR["cutout_frac"])) * wd))
                r0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
                c0 = int(torch.randint(0, wd - bw + 1, (1,), generator=g))
                v[..., r0:r0 + bh, c0:c0 + bw] = float(u(0, 1))
                w[..., r0:r0 + bh, c0:c0 + bw] = 0.0
        out.append(v.clamp(0.0, 1.0) * 2.0 - 1.0)
        weights.append(w)
    return torch.cat(out), torch.cat(weights)
