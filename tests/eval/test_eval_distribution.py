"""FID-ENL0 (Fréchet), KID, coverage/density and MMD on synthetic features with known answers."""

import numpy as np
import pytest
import torch

import medshift_fast.eval.distribution as dist
from medshift_fast.errors import MedShiftError
from medshift_fast.eval import coverage_density, feature_metrics, frechet_distance, kid, mmd_rbf


def _feats(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


@pytest.mark.parametrize("n,d", [(64, 128), (400, 16)])  # SVD route (N < D) and eigh route
def test_frechet_known_answers(n, d):
    a = _feats(n, d, 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * d)
    # Translating a set keeps its covariance: d² = ||c||² exactly.
    c = torch.linspace(-0.5, 0.5, d)
    assert frechet_distance(a, a + c) == pytest.approx(float(c.square().sum()), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("na,nb,d", [(120, 90, 10), (30, 40, 60)])
def test_frechet_matches_scipy_sqrtm(na, nb, d):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a, b = _feats(na, d, 1), 1.3 * _feats(nb, d, 2, shift=0.2)
    an, bn = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    ref = (
        ((an.mean(0) - bn.mean(0)) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2).real)
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_grows_with_shift():
    a, b = _feats(300, 32, 3), _feats(300, 32, 4)
    vals = [frechet_distance(a, b + s) for s in (0.0, 0.2, 0.5, 1.0)]
    assert all(x < y for x, y in zip(vals, vals[1:]))


def test_kid_zero_for_same_distribution_and_monotone():
    a, b = _feats(400, 64, 5), _feats(400, 64, 6)
    mean0, std0 = kid(a, b, subsets=20, subset_size=200)
    assert abs(mean0) < max(3 * std0, 1e-3)
    vals = [kid(a, b + s, subsets=20, subset_size=200)[0] for s in (0.2, 0.5, 1.0)]
    assert mean0 < vals[0] < vals[1] < vals[2]
    assert vals[0] > 5 * std0


def test_kid_gram_cache_matches_direct(monkeypatch):
    a, b = _feats(150, 20, 7), _feats(120, 20, 8, shift=0.3)
    cached = kid(a, b, subsets=5, subset_size=50, seed=3)
    monkeypatch.setattr(dist, "_KID_FULL_GRAM_MAX", 0)
    direct = kid(a, b, subsets=5, subset_size=50, seed=3)
    assert cached == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_coverage_density():
    real = _feats(300, 16, 9)
    same = coverage_density(real, real, k=5)
    assert same["coverage"] == 1.0
    indep = coverage_density(real, _feats(300, 16, 10), k=5)
    assert indep["coverage"] > 0.8 and 0.6 < indep["density"] < 1.4
    far = coverage_density(real, _feats(300, 16, 11, shift=10.0), k=5)
    assert far["coverage"] == 0.0 and far["density"] == 0.0
    with pytest.raises(MedShiftError, match="at least"):
        coverage_density(real[:5], real, k=5)


def test_mmd_zero_for_same_distribution_and_monotone():
    a, b = _feats(300, 32, 12), _feats(300, 32, 13)
    m0 = mmd_rbf(a, b)
    assert abs(m0) < 5e-3
    assert mmd_rbf(a, a) < 1e-2
    vals = [mmd_rbf(a, b + s) for s in (0.3, 0.6, 1.2)]
    assert m0 < vals[0] < vals[1] < vals[2]


def test_mmd_std_floor_ignores_dead_channels():
    # Same distribution except near-constant channels whose tiny value differs between the sets
    # (as dead ReLU6 channels of a CNN do). Without the floor, z-scoring blows it up.
    a, b = _feats(200, 32, 14), _feats(200, 32, 15)
    g = torch.Generator().manual_seed(0)
    a[:, :4] = 1e-9 * torch.randn(200, 4, generator=g)
    b[:, :4] = 1e-9 * torch.randn(200, 4, generator=g) + 1e-8
    assert mmd_rbf(a, b, std_floor=0.1) < 0.01
    assert mmd_rbf(a, b, std_floor=0.0) > 0.05


def test_feature_metrics_keys_and_errors():
    out = feature_metrics(_feats(60, 8, 16), _feats(50, 8, 17), kid_subsets=3, kid_subset_size=20)
    assert set(out) == {"fid_enl0", "kid", "kid_std", "coverage", "density", "mmd"}
    assert all(np.isfinite(v) for v in out.values())
    with pytest.raises(MedShiftError, match="same dimension"):
        frechet_distance(_feats(10, 4, 0), _feats(10, 5, 0))
    with pytest.raises(MedShiftError, match="NaN"):
        kid(torch.full((4, 3), float("nan")), _feats(4, 3, 0))
