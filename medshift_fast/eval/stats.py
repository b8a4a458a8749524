"""Paired bootstrap intervals for the difference between two methods scored on the same images.

Every method of an evaluation translates the same N source images, so method A and method B are
paired by image. One matrix of resampled image indices (``bootstrap_indices``: B rows of N draws
with replacement, fixed seed) is shared by every method; a metric is recomputed on each resample
and the difference A − B is taken resample by resample. The 95 % interval is the 2.5th and 97.5th
percentile of those differences (percentile bootstrap, Efron & Tibshirani 1993).

* Per-image metrics (PSNR vs the true target, SSIM vs the source): the mean over the resample.
* Set metrics, recomputed on the resampled set against the fixed reference set (the reference is
  common to both methods and is not resampled):
  - FID-ENL0 from Gram matrices precomputed once per method (:class:`FIDStat`), so a resample
    costs one N × N_ref SVD; equal to ``frechet_distance(feats[idx], ref)``.
  - KID as the all-pairs unbiased MMD² with the KID polynomial kernel (:class:`KIDStat`); pairs of
    draws of the same image are left out of the within-set term, so the identity resample gives
    the plain unbiased estimate (the mean of the subset estimates in the table converges to it).
  - NPS distance from per-image noise power spectra (:class:`NPSStat`): a set's NPS is the mean of
    its images' spectra, so a resample's NPS is the mean over the drawn images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import MedShiftError

RESAMPLES = 1000
LEVEL = 0.95


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) int64 image indices drawn with replacement (deterministic in ``seed``)."""
    if n < 1 or resamples < 1:
        raise MedShiftError(f"bootstrap needs n >= 1 and resamples >= 1, got {n}, {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(samples, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the (1 − level)/2 and (1 + level)/2 quantiles of ``samples``."""
    s = np.asarray(samples, dtype=np.float64)
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _check_n(a, b, n):
    if len(a) != n or len(b) != n:
        raise MedShiftError(f"paired values must have one entry per image ({n}); got {len(a)} "
                            f"and {len(b)}")


def paired_mean_diff(a, b, idx: np.ndarray, level: float = LEVEL) -> dict:
    """Interval for mean(a) − mean(b) over paired per-image values.

    Args:
        a, b: (N,) per-image values of the two methods on the same images.
        idx: (B, N) indices from :func:`bootstrap_indices`.
        level: interval coverage.

    Returns:
        {"diff": mean(a − b), "lo", "hi"}.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    _check_n(d, d, idx.shape[1])
    lo, hi = percentile_interval(d[idx].mean(1), level)
    return {"diff": float(d.mean()), "lo": lo, "hi": hi}


def paired_stat_diff(sa, sb, idx: np.ndarray, level: float = LEVEL) -> dict:
    """Interval for stat_A(set) − stat_B(set), recomputed on every resample.

    Args:
        sa, sb: callables (index array of length N) -> float, e.g. :class:`FIDStat`.
        idx: (B, N) indices from :func:`bootstrap_indices` (the same rows for both methods).
        level: interval coverage.
    """
    full = np.arange(idx.shape[1])
    boot = np.array([sa(i) - sb(i) for i in idx])
    lo, hi = percentile_interval(boot, level)
    return {"diff": float(sa(full) - sb(full)), "lo": lo, "hi": hi}


class FIDStat:
    """FID-ENL0 of a resampled feature set against a fixed reference, from precomputed products.

    With A the method's (N, D) features, R the reference's, m_r = mean(R), C_r = R − m_r:
    for draws idx (weights w/N), mu = mean(A[idx]), tr S = (Σ_idx G_ii − N·||mu||²) / (N − 1)
    with G = A·Aᵀ, and (A[idx] − mu)·C_rᵀ = P[idx] − mean(P[idx]) with P = A·C_rᵀ, whose
    nuclear norm / sqrt((N − 1)(N_r − 1)) is tr((S^½ S_r S^½)^½) (as in ``frechet_distance``).
    """

    def __init__(self, feats: torch.Tensor, ref: torch.Tensor):
        a = feats.detach().double().cpu().numpy()
        r = ref.detach().double().cpu().numpy()
        if a.shape[0] < 2 or r.shape[0] < 2 or a.shape[1] != r.shape[1]:
            raise MedShiftError(f"FID bootstrap needs >= 2 rows of equal width, got {a.shape} "
                                f"and {r.shape}")
        mu_r = r.mean(0)
        c_r = r - mu_r
        self.n, self.n_r = a.shape[0], r.shape[0]
        self.gram = a @ a.T
        self.proj = a @ c_r.T
        self.a_mu_r = a @ mu_r
        self.mu_r2 = float(mu_r @ mu_r)
        self.tr_r = float(np.square(c_r).sum() / (self.n_r - 1))

    def __call__(self, idx: np.ndarray) -> float:
        n = len(idx)
        g = self.gram[np.ix_(idx, idx)]
        mu2 = g.sum() / n**2  # ||mu||^2
        tr_a = (np.trace(g) - n * mu2) / (n - 1)
        p = self.proj[idx]
        p = p - p.mean(0)
        tr_cov = np.linalg.svd(p, compute_uv=False).sum() / math.sqrt((n - 1) * (self.n_r - 1))
        dmu2 = mu2 - 2.0 * self.a_mu_r[idx].mean() + self.mu_r2
        return max(float(dmu2 + tr_a + self.tr_r - 2.0 * tr_cov), 0.0)


class KIDStat:
    """All-pairs unbiased MMD² (KID kernel (x·y/D + 1)³) of a resampled set vs a fixed reference."""

    def __init__(self, feats: torch.Tensor, ref: torch.Tensor, degree: int = 3,
                 coef0: float = 1.0, chunk: int = 2048):
        a = feats.detach().double().cpu().numpy()
        r = ref.detach().double().cpu().numpy()
        g = 1.0 / a.shape[1]
        self.k_aa = (g * (a @ a.T) + coef0) ** degree
        self.k_ar = ((g * (a @ r.T) + coef0) ** degree).mean(1)  # per drawn image: mean over ref
        total, diag = 0.0, 0.0
        for s in range(0, r.shape[0], chunk):  # reference within-set term, in blocks
            k = (g * (r[s:s + chunk] @ r.T) + coef0) ** degree
            total += k.sum()
            diag += np.diagonal(k, offset=s).sum()
        self.s_rr = (total - diag) / (r.shape[0] * (r.shape[0] - 1))

    def __call__(self, idx: np.ndarray) -> float:
        k = self.k_aa[np.ix_(idx, idx)]
        distinct = idx[:, None] != idx[None, :]
        s_aa = (k * distinct).sum() / max(1, distinct.sum())
        return float(s_aa + self.s_rr - 2.0 * self.k_ar[idx].mean())


class NPSStat:
    """NPS distance (dB RMS log ratio) of a resampled set's mean spectrum to a fixed NPS."""

    def __init__(self, per_image: np.ndarray, ref_nps: np.ndarray):
        self.per_image = np.asarray(per_image, dtype=np.float64)
        self.ref = np.maximum(np.asarray(ref_nps, dtype=np.float64), np.finfo(np.float64).tiny)
        if self.per_image.ndim != 2 or self.per_image.shape[1] != self.ref.shape[0]:
            raise MedShiftError(f"per-image spectra {self.per_image.shape} do not match the "
                                f"reference bins {self.ref.shape}")

    def __call__(self, idx: np.ndarray) -> float:
        p = np.maximum(self.per_image[idx].mean(0), np.finfo(np.float64).tiny)
        return float(np.sqrt(np.mean(np.square(10.0 * np.log10(p / self.ref)))))


def per_image_nps(images: torch.Tensor) -> np.ndarray:
    """(N, bins) radially averaged NPS of each image (their mean is the set's NPS)."""
    from .physics import noise_power_spectrum

    return np.stack([noise_power_spectrum(images[i:i + 1]).nps.numpy()
                     for i in range(images.shape[0])])


# (key, label, higher is better, per-image (True) or set metric)
METRICS = (
    ("psnr_tgt", "PSNR vs true target (dB)", True, True),
    ("ssim_src", "SSIM vs source", True, True),
    ("fid_enl0", "FID-ENL0", False, False),
    ("kid", "KID", False, False),
    ("nps_dist", "NPS distance (dB)", False, False),
)


def verdict(lo: float, hi: float, higher_better: bool, tol: float = 1e-9) -> str:
    """"method better" / "baseline better" when the interval excludes 0 (by more than ``tol``,
    so round-off between two near-identical methods decides nothing), else "not resolved"."""
    if lo > tol:
        return "method better" if higher_better else "baseline better"
    if hi < -tol:
        return "baseline better" if higher_better else "method better"
    return "not resolved"


def paired_bootstrap(samples: dict[str, dict], pairs, *, resamples: int = RESAMPLES,
                     seed: int = 0, level: float = LEVEL) -> list[dict]:
    """Intervals for every (method, baseline) pair and metric.

    Args:
        samples: {method name: {"psnr_tgt": (N,) or None, "ssim_src": (N,), "fid_enl0":
            FIDStat or None, "kid": KIDStat or None, "nps_dist": NPSStat}} (a missing or None
            entry skips that metric).
        pairs: [(method, baseline)] names of ``samples``.
        resamples: bootstrap resamples (one index matrix shared by every method).
        seed: index seed.
        level: interval coverage.

    Returns:
        One dict per (pair, metric): method, baseline, metric, diff (method − baseline), lo, hi,
        level, n, resamples, higher_better, verdict.
    """
    if not pairs:
        return []
    ns = {len(s["ssim_src"]) for s in samples.values()}
    if len(ns) != 1:
        raise MedShiftError(f"paired bootstrap needs every method on the same images, got n {ns}")
    n = ns.pop()
    idx = bootstrap_indices(n, resamples, seed)
    full = np.arange(n)
    cache: dict[tuple[str, str], tuple[float, np.ndarray]] = {}

    def values(name: str, key: str, per_image: bool):
        if (name, key) not in cache:
            v = samples[name].get(key)
            if v is None:
                cache[name, key] = None
            elif per_image:
                v = np.asarray(v, dtype=np.float64)
                cache[name, key] = (float(v.mean()), v[idx].mean(1))
            else:
                cache[name, key] = (float(v(full)), np.array([v(i) for i in idx]))
        return cache[name, key]

    out = []
    for a, b in pairs:
        for key, _label, hi_better, per_image in METRICS:
            va, vb = values(a, key, per_image), values(b, key, per_image)
            if va is None or vb is None:
                continue
            d = va[1] - vb[1]
            if not np.all(np.isfinite(d)):
                continue
            lo, hi = percentile_interval(d, level)
            out.append({"method": a, "baseline": b, "metric": key, "diff": va[0] - vb[0],
                        "lo": lo, "hi": hi, "level": level, "n": n, "resamples": resamples,
                        "higher_better": hi_better, "verdict": verdict(lo, hi, hi_better)})
    return out
