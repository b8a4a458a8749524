"""Paired bootstrap: constructed cases (identical methods, a constant shift), the normal-theory
interval at large n, and the set-metric statistics against the metric functions they resample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.eval import frechet_distance, noise_power_spectrum, nps_distance
from medshift_fast.eval import stats as S


def _feats(n, d=12, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_indices_are_seeded_and_shaped():
    a, b = S.bootstrap_indices(7, 50, seed=3), S.bootstrap_indices(7, 50, seed=3)
    assert a.shape == (50, 7) and np.array_equal(a, b) and a.min() >= 0 and a.max() < 7
    assert not np.array_equal(a, S.bootstrap_indices(7, 50, seed=4))
    with pytest.raises(MedShiftError):
        S.bootstrap_indices(0)


def test_identical_methods_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(30, 2, 40)
    idx = S.bootstrap_indices(40, 500)
    r = S.paired_mean_diff(a, a.copy(), idx)
    assert r == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    f = _feats(40)
    ref = _feats(60, seed=1)
    r = S.paired_stat_diff(S.FIDStat(f, ref), S.FIDStat(f.clone(), ref), idx)
    assert abs(r["diff"]) < 1e-9 and abs(r["lo"]) < 1e-9 and abs(r["hi"]) < 1e-9


def test_a_constant_shift_is_recovered_exactly():
    rng = np.random.default_rng(1)
    b = rng.normal(30, 3, 25)
    r = S.paired_mean_diff(b + 1.5, b, S.bootstrap_indices(25, 300))
    assert r["diff"] == pytest.approx(1.5) and r["lo"] == pytest.approx(1.5)
    assert r["hi"] == pytest.approx(1.5)
    assert S.verdict(r["lo"], r["hi"], higher_better=True) == "method better"
    assert S.verdict(r["lo"], r["hi"], higher_better=False) == "baseline better"
    assert S.verdict(-1.0, 2.0, True) == "not resolved"


def test_interval_matches_the_normal_theory_width_at_large_n():
    rng = np.random.default_rng(2)
    n = 400
    b = rng.normal(0, 1, n)
    a = b + 0.3 + rng.normal(0, 0.5, n)  # paired differences ~ N(0.3, 0.5²)
    d = a - b
    r = S.paired_mean_diff(a, b, S.bootstrap_indices(n, 2000, seed=0))
    half = 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.1)
    assert r["lo"] < d.mean() < r["hi"]


def test_fid_stat_is_frechet_distance_of_the_resampled_set():
    f, ref = _feats(20, shift=0.4), _feats(33, seed=5)
    st = S.FIDStat(f, ref)
    assert st(np.arange(20)) == pytest.approx(frechet_distance(f, ref), rel=1e-9)
    idx = S.bootstrap_indices(20, 3, seed=1)[0]
    assert st(idx) == pytest.approx(frechet_distance(f[torch.from_numpy(idx)], ref), rel=1e-9)


def test_kid_stat_is_the_unbiased_mmd_and_drops_repeated_draws():
    f, ref = _feats(15, shift=0.5), _feats(21, seed=2)
    d = f.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1.0) ** 3

    def mmd(x, y):
        m, n = x.shape[0], y.shape[0]
        kxx, kyy = k(x, x), k(y, y)
        return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                     + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * k(x, y).mean())

    st = S.KIDStat(f, ref)
    assert st(np.arange(15)) == pytest.approx(mmd(f, ref), rel=1e-9)
    idx = np.array([0, 0, 1, 2, 3, 3, 3, 4])  # within-set pairs of the same image left out
    u = f[torch.from_numpy(idx)]
    kk = k(u, u)
    mask = torch.from_numpy(idx[:, None] != idx[None, :])
    n = ref.shape[0]
    kr = k(ref, ref)
    expect = float((kk * mask).sum() / mask.sum() + (kr.sum() - kr.diagonal().sum()) / (n * (n - 1))
                   - 2 * k(u, ref).mean())
    assert st(idx) == pytest.approx(expect, rel=1e-9)


def test_nps_stat_is_nps_distance_of_the_set():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(6, 1, 16, 16, generator=g)
    ref = noise_power_spectrum(0.05 * torch.randn(8, 1, 16, 16, generator=g))
    st = S.NPSStat(S.per_image_nps(x), ref.nps.numpy())
    assert st(np.arange(6)) == pytest.approx(nps_distance(x, ref), rel=1e-9)
    idx = np.array([1, 1, 4, 5, 0, 2])
    assert st(idx) == pytest.approx(nps_distance(x[torch.from_numpy(idx)], ref), rel=1e-9)


def test_paired_bootstrap_rows_and_verdicts():
    rng = np.random.default_rng(3)
    n = 30
    base = rng.normal(30, 1, n)
    f = _feats(n)
    ref = _feats(40, seed=9)
    imgs = 0.05 * torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ref_nps = noise_power_spectrum(0.05 * torch.randn(20, 1, 16, 16, generator=torch.Generator()
                                   .manual_seed(2))).nps.numpy()

    def sample(psnr, feats, scale):
        return {"psnr_tgt": psnr, "ssim_src": np.full(n, 0.9), "fid_enl0": S.FIDStat(feats, ref),
                "kid": S.KIDStat(feats, ref), "nps_dist": S.NPSStat(S.per_image_nps(scale * imgs),
                                                                    ref_nps)}

    samples = {"student": sample(base + 2.0, f, 1.0), "TV": sample(base, f + 3.0, 4.0)}
    out = S.paired_bootstrap(samples, [("student", "TV")], resamples=200, seed=0)
    by = {r["metric"]: r for r in out}
    assert set(by) == {"psnr_tgt", "ssim_src", "fid_enl0", "kid", "nps_dist"}
    assert by["psnr_tgt"]["diff"] == pytest.approx(2.0) and by["psnr_tgt"]["verdict"] == \
        "method better"
    assert by["ssim_src"]["verdict"] == "not resolved" and by["ssim_src"]["lo"] == 0.0
    assert by["fid_enl0"]["diff"] < 0 and by["fid_enl0"]["verdict"] == "method better"
    assert by["nps_dist"]["verdict"] == "method better"  # 16x the power of the reference's
    assert all(r["n"] == n and r["resamples"] == 200 for r in out)
    again = S.paired_bootstrap(samples, [("student", "TV")], resamples=200, seed=0)
    assert again == out
    samples["TV"]["psnr_tgt"] = None  # no aligned truth: that metric is left out
    assert "psnr_tgt" not in {r["metric"] for r in S.paired_bootstrap(samples, [("student",
                                                                                  "TV")])}
