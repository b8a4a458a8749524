"""X-ray physics metrics (NPS, noise level, histogram distance): known answers, synthetic images."""

import pytest
import torch
import torch.nn.functional as F

from medshift_fast.errors import MedShiftError
from medshift_fast.eval import (
    histogram_distance,
    noise_level,
    noise_power_spectrum,
    noise_ratio,
    nps_distance,
)


def _noise(n, size, std, seed):
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(n, 1, size, size, generator=g)


def _anatomy(n=16, size=64):
    """Smooth 'anatomy': a soft-edged disc plus a gentle gradient, identical in every image."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = 0.6 * torch.tanh(4 * (0.6 - (xx**2 + yy**2).sqrt())) + 0.2 * xx
    return base.expand(n, 1, size, size).clone()


@pytest.mark.parametrize("sigma", [1.5, None])
@pytest.mark.parametrize("std", [0.03, 0.2])
def test_nps_of_white_noise_is_flat_at_its_variance(sigma, std):
    nps = noise_power_spectrum(_noise(128, 32, std, seed=1), sigma=sigma)
    ratio = nps.nps / std**2
    assert nps.freqs.min() > 0 and nps.freqs.max() <= 0.5
    assert len(ratio) >= 4
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.04)
    assert torch.all((ratio - 1).abs() < 0.15), ratio


def test_nps_of_correlated_noise_falls_with_frequency():
    x = _noise(64, 32, 0.1, seed=2)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    nps = noise_power_spectrum(blurred)
    assert nps.nps[0] > 3 * nps.nps[-1]


def test_nps_on_anatomy_sees_the_noise():
    clean = _anatomy()
    noisy = clean + _noise(16, 64, 0.05, seed=3)
    nps = noise_power_spectrum(noisy)
    # The high-pass residual removes the smooth anatomy: the upper band reads the noise variance.
    upper = nps.nps[nps.freqs > 0.25]
    assert float(upper.mean()) == pytest.approx(0.05**2, rel=0.15)


def test_nps_distance_zero_and_grows_with_added_noise():
    base = _anatomy() + _noise(16, 64, 0.05, seed=4)
    assert nps_distance(base, base) == 0.0
    assert nps_distance(base, base, metric="l2") == 0.0
    vals = [nps_distance(base + _noise(16, 64, s, seed=5), base) for s in (0.01, 0.03, 0.1)]
    assert 0 < vals[0] < vals[1] < vals[2]
    # precomputed spectra give the same answer
    pa, pb = noise_power_spectrum(base + _noise(16, 64, 0.03, seed=5)), noise_power_spectrum(base)
    assert nps_distance(pa, pb) == pytest.approx(vals[1])
    with pytest.raises(MedShiftError, match="frequency bins"):
        nps_distance(base, base[..., :48, :48])


@pytest.mark.parametrize("method", ["diff2", "gaussian"])
@pytest.mark.parametrize("robust", [True, False])
def test_noise_level_of_white_noise(method, robust):
    for std in (0.02, 0.1):
        x = _noise(32, 32, std, seed=6)
        got = noise_level(x, method=method, robust=robust, reduction="mean")
        assert float(got) == pytest.approx(std, rel=0.05)


def test_noise_level_on_anatomy_and_ratio():
    clean = _anatomy()
    assert float(noise_level(clean, reduction="mean")) < 1e-3  # anatomy alone: ~no noise
    # At 32x32 the same anatomy is sharp at the pixel scale: the second difference still ignores
    # it, the Gaussian high-pass does not.
    small = _anatomy(size=32)
    assert float(noise_level(small, reduction="mean")) < 2e-3
    assert float(noise_level(small, method="gaussian", reduction="mean")) > 5e-3
    lo = clean + _noise(16, 64, 0.03, seed=7)
    hi = clean + _noise(16, 64, 0.06, seed=8)
    assert float(noise_level(lo, reduction="mean")) == pytest.approx(0.03, rel=0.05)
    assert float(noise_level(lo, method="gaussian", reduction="mean")) == pytest.approx(
        0.03, rel=0.2
    )
    assert noise_ratio(hi, lo) == pytest.approx(2.0, rel=0.1)
    per = noise_level(hi, batch_size=5)
    assert per.shape == (16,)


def test_histogram_distance():
    x = _anatomy() + _noise(16, 64, 0.05, seed=9)
    x = x.clamp(-0.9, 0.9)
    assert histogram_distance(x, x) == 0.0
    assert histogram_distance(x, x, metric="chi2") == 0.0
    # Shifting every pixel by c moves every quantile by c: W1 = c (up to one bin width).
    c = 0.05
    assert histogram_distance(x + c, x) == pytest.approx(c, abs=2 / 256)
    vals = [histogram_distance(x + s, x) for s in (0.01, 0.03, 0.08)]
    assert vals[0] < vals[1] < vals[2]
    # disjoint supports: chi² = 1
    assert histogram_distance(
        torch.full((2, 1, 8, 8), -0.5), torch.full((2, 1, 8, 8), 0.5), metric="chi2"
    ) == pytest.approx(1.0)
    with pytest.raises(MedShiftError, match="metric"):
        histogram_distance(x, x, metric="kl")


def test_too_small_images_raise():
    with pytest.raises(MedShiftError, match="too small"):
        noise_level(torch.zeros(2, 1, 4, 4), method="gaussian")
    with pytest.raises(MedShiftError, match="3x3"):
        noise_level(torch.zeros(2, 1, 2, 2))
