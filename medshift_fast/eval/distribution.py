"""Distribution metrics on feature sets (e.g. ENL0 features): FID-ENL0, KID, coverage/density, MMD.

All functions take (N, D) feature tensors, compute in float64 on the features' device and return
Python floats. Convention: the first argument is the set being judged (translations / fakes) and the
second the reference (target-domain real images) where the metric is asymmetric.

Naming: the Fréchet distance on EfficientNet-Lite0 features must be reported as "FID-ENL0", never
"FID" (the numbers are not comparable with Inception-v3 FID).
"""

from __future__ import annotations

import math

import torch

from ..errors import MedShiftError
from ._common import check_features, check_same_dim


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clamped to 0)."""
    w, v = torch.linalg.eigh((m + m.T) * 0.5)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID-ENL0 on ENL0 features).

    d² = ||mu_a − mu_b||² + tr(S_a) + tr(S_b) − 2·tr((S_a^½ S_b S_a^½)^½)

    The trace term equals the nuclear norm ||A·Bᵀ||_* / sqrt((N_a − 1)(N_b − 1)) with A, B the
    centred features (the non-zero eigenvalues of S_a^½ S_b S_a^½ are the squared singular values
    of A·Bᵀ / sqrt(...)). That N_a x N_b SVD is used when it is smaller than the D x D route
    (symmetric eigendecompositions); both are stable for singular covariances (N < D) and give 0 for
    identical sets up to round-off.

    Args:
        feat_a: (N_a, D) features (N_a >= 2).
        feat_b: (N_b, D) features (N_b >= 2).

    Returns:
        The squared Fréchet distance (>= 0), as FID reports it.
    """
    a = check_features(feat_a, "feat_a")
    b = check_features(feat_b, "feat_b").to(a.device)
    check_same_dim(a, b)
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    tr_a = ca.square().sum() / (na - 1)
    tr_b = cb.square().sum() / (nb - 1)
    if na * nb <= 4 * d * d:
        tr_covmean = torch.linalg.svdvals(ca @ cb.T).sum() / math.sqrt((na - 1) * (nb - 1))
    else:
        s_a, s_b = ca.T @ ca / (na - 1), cb.T @ cb / (nb - 1)
        sa_half = _sqrt_psd(s_a)
        m = sa_half @ s_b @ sa_half
        tr_covmean = torch.linalg.eigvalsh((m + m.T) * 0.5).clamp_min(0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + tr_a + tr_b - 2.0 * tr_covmean
    return max(float(d2), 0.0)


_KID_FULL_GRAM_MAX = 4096  # rows; 3 float64 Gram matrices of at most 128 MiB each


def _poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float):
    return (gamma * (x @ y.T) + coef0) ** degree


def _mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² U-statistic from the three kernel matrices (diagonals of k_xx/k_yy dropped)."""
    m, n = k_xx.shape[0], k_yy.shape[0]
    sxx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    syy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2.0 * k_xy.mean()


def kid(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance on given features (Bińkowski et al. 2018): unbiased MMD² with the
    polynomial kernel k(x, y) = (gamma·x·y + coef0)^degree, gamma = 1/D, averaged over subsets.

    Args:
        feat_a: (N_a, D) features.
        feat_b: (N_b, D) features.
        subsets: number of random subsets.
        subset_size: samples per subset from each set (clipped to min(N_a, N_b)).
        degree, gamma, coef0: polynomial kernel parameters (defaults as in the KID paper).
        seed: subset sampling seed (the result is deterministic).

    Returns:
        (mean, std) of the subset MMD² estimates; ≈ 0 (can be slightly negative) for equal
        distributions.
    """
    a = check_features(feat_a, "feat_a")
    b = check_features(feat_b, "feat_b").to(a.device)
    check_same_dim(a, b)
    if subsets < 1:
        raise MedShiftError(f"subsets must be >= 1, got {subsets}")
    na, nb = a.shape[0], b.shape[0]
    m = min(subset_size, na, nb)
    g = float(gamma) if gamma is not None else 1.0 / a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    # Small sets: kernel matrices once, then each subset is three quadratic forms with 0/1 vectors.
    full = max(na, nb) <= _KID_FULL_GRAM_MAX
    if full:
        k_aa = _poly_kernel(a, a, degree, g, coef0)
        k_bb = _poly_kernel(b, b, degree, g, coef0)
        k_ab = _poly_kernel(a, b, degree, g, coef0)
    vals = []
    for _ in range(subsets):
        ia = torch.randperm(na, generator=gen)[:m].to(a.device)
        ib = torch.randperm(nb, generator=gen)[:m].to(a.device)
        if full:
            wa = torch.zeros(na, dtype=a.dtype, device=a.device).index_fill_(0, ia, 1.0)
            wb = torch.zeros(nb, dtype=a.dtype, device=a.device).index_fill_(0, ib, 1.0)
            sxx = (wa @ k_aa @ wa - k_aa.diagonal()[ia].sum()) / (m * (m - 1))
            syy = (wb @ k_bb @ wb - k_bb.diagonal()[ib].sum()) / (m * (m - 1))
            vals.append(sxx + syy - 2.0 * (wa @ k_ab @ wb) / (m * m))
        else:
            x, y = a[ia], b[ib]
            vals.append(
                _mmd2_unbiased(
                    _poly_kernel(x, x, degree, g, coef0),
                    _poly_kernel(y, y, degree, g, coef0),
                    _poly_kernel(x, y, degree, g, coef0),
                )
            )
    v = torch.stack(vals)
    std = float(v.std(unbiased=False)) if subsets > 1 else 0.0
    return float(v.mean()), std


def coverage_density(
    real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 5, chunk: int = 4096
) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics").

    With r_i the distance from real sample X_i to its k-th nearest other real sample:
      density  = 1/(k·M) · Σ_j Σ_i 1[||Y_j − X_i|| <= r_i]      (fidelity; ~1 when equal, unbounded)
      coverage = 1/N · Σ_i 1[∃ j: ||Y_j − X_i|| <= r_i]         (diversity; in [0, 1])

    Args:
        real_feats: (N, D) reference features (N > k).
        fake_feats: (M, D) features of the set being judged.
        k: nearest-neighbour count (5 in the paper).
        chunk: fake rows per distance block (bounds memory at chunk·N doubles).

    Returns:
        {"coverage": float, "density": float}.
    """
    x = check_features(real_feats, "real_feats", min_rows=k + 1)
    y = check_features(fake_feats, "fake_feats", min_rows=1).to(x.device)
    check_same_dim(x, y)
    if k < 1:
        raise MedShiftError(f"k must be >= 1, got {k}")
    # k-th nearest real neighbour of each real sample, excluding itself (the 0 on the diagonal).
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s : s + chunk], x)
        radii[s : s + chunk] = d.kthvalue(k + 1, dim=1).values
    covered = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    hits = 0.0
    for s in range(0, y.shape[0], chunk):
        inside = torch.cdist(y[s : s + chunk], x) <= radii  # (m, N)
        hits += float(inside.sum())
        covered |= inside.any(0)
    return {
        "coverage": float(covered.double().mean()),
        "density": hits / (k * y.shape[0]),
    }


def standardize(
    feat_a: torch.Tensor, feat_b: torch.Tensor, std_floor: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """z-score both sets with the pooled per-feature mean and std.

    Per-feature std is floored at ``std_floor × median(std)``: ENL0 features include near-constant
    channels (ReLU6 outputs that are almost always 0); dividing by their tiny std would make noise
    in those channels dominate every distance.
    """
    pooled = torch.cat([feat_a, feat_b])
    mu = pooled.mean(0)
    std = pooled.std(0)
    floor = std_floor * std.median().clamp_min(torch.finfo(std.dtype).tiny)
    std = torch.maximum(std, floor)
    return (feat_a - mu) / std, (feat_b - mu) / std


def mmd_rbf(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    *,
    bandwidth: float | None = None,
    standardize_features: bool = True,
    std_floor: float = 0.1,
    max_median_samples: int = 2000,
    seed: int = 0,
) -> float:
    """Unbiased MMD² with a Gaussian kernel k(x, y) = exp(−||x − y||² / (2·bandwidth²)).

    Args:
        feat_a: (N_a, D) features (N_a >= 2).
        feat_b: (N_b, D) features (N_b >= 2).
        bandwidth: kernel width; None -> median heuristic (median pairwise distance of the pooled,
            standardised sample; at most ``max_median_samples`` points are used for it).
        standardize_features: z-score with the pooled mean/std first (see :func:`standardize`).
        std_floor: relative floor on the per-feature std (fraction of the median std).
        max_median_samples: subsample size for the median heuristic.
        seed: subsampling seed.

    Returns:
        MMD² (≈ 0 for equal distributions; may be slightly negative; at most 2).
    """
    a = check_features(feat_a, "feat_a")
    b = check_features(feat_b, "feat_b").to(a.device)
    check_same_dim(a, b)
    if standardize_features:
        a, b = standardize(a, b, std_floor)
    if bandwidth is None:
        pooled = torch.cat([a, b])
        if pooled.shape[0] > max_median_samples:
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(pooled.shape[0], generator=gen)[:max_median_samples]
            pooled = pooled[idx.to(pooled.device)]
        d = torch.cdist(pooled, pooled)
        off = d[~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)]
        bandwidth = float(off.median())
    if not bandwidth > 0:
        return 0.0  # every point identical: no discrepancy to measure
    inv = -0.5 / bandwidth**2
    k_xx = torch.exp(inv * torch.cdist(a, a).square())
    k_yy = torch.exp(inv * torch.cdist(b, b).square())
    k_xy = torch.exp(inv * torch.cdist(a, b).square())
    return float(_mmd2_unbiased(k_xx, k_yy, k_xy))


def feature_metrics(
    fake_feats: torch.Tensor,
    real_feats: torch.Tensor,
    *,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """All feature-space metrics of ``fake_feats`` against the reference ``real_feats``.

    Returns:
        {"fid_enl0", "kid", "kid_std", "coverage", "density", "mmd"} (floats; the FID-ENL0 name
        assumes ENL0 features).
    """
    kid_mean, kid_std = kid(
        fake_feats, real_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    cd = coverage_density(real_feats, fake_feats, k=min(k, real_feats.shape[0] - 1))
    return {
        "fid_enl0": frechet_distance(fake_feats, real_feats),
        "kid": kid_mean,
        "kid_std": kid_std,
        "coverage": cd["coverage"],
        "density": cd["density"],
        "mmd": mmd_rbf(fake_feats, real_feats, seed=seed),
    }
