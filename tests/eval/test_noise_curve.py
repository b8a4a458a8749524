"""Noise as a function of signal: Poisson images recover std = 1/sqrt(counts) after the log
(closed form), the body range leaves the air out, bad input is refused."""

import numpy as np
import pytest
import torch
from _xray import xray

from medshift_fast.errors import MedShiftError
from medshift_fast.eval.noise_curve import body_range, curve_deviation, noise_curve, signal_bins

N0, A, B = 20000.0, 2.5, 2.5  # image u = (log(N0 / k) - B) / A, k ~ Poisson(N0 exp(-p))


def _poisson_ramp(n=24, size=96, seed=0):
    """Log-domain Poisson images whose attenuation p ramps from 0.5 to 4.5 across x: counts from
    ~12000 down to ~220, so the noise std of u is 1 / (A sqrt(N0 exp(-p)))."""
    g = np.random.default_rng(seed)
    p = np.broadcast_to(np.linspace(0.5, 4.5, size), (n, 1, size, size))
    k = g.poisson(N0 * np.exp(-p)).clip(min=1)
    return torch.from_numpy((np.log(N0 / k) - B) / A).float()


def test_poisson_curve_matches_the_closed_form():
    x = _poisson_ramp()
    edges = signal_bins(x, 6, body="all")
    c = noise_curve(x, edges)
    p = A * c.signal + B  # the bin's attenuation
    expected = 1.0 / (A * np.sqrt(N0 * np.exp(-p)))
    np.testing.assert_allclose(c.std, expected, rtol=0.08)
    assert np.all(np.diff(c.std) > 0)  # fewer counts, more noise
    assert curve_deviation(c, c) == 0.0


def test_a_scaled_noise_reads_as_its_ratio():
    x = _poisson_ramp(seed=1)
    smooth = torch.from_numpy(np.broadcast_to(
        (np.linspace(0.5, 4.5, 96) - B) / A, x.shape).copy()).float()
    half = smooth + 0.7 * (x - smooth)  # the same noise at 70 %
    edges = signal_bins(x, 6, body="all")
    dev = curve_deviation(noise_curve(half, edges), noise_curve(x, edges))
    assert dev == pytest.approx(0.3, abs=0.05)


def test_body_range_leaves_the_air_out():
    x, _ = xray(range(4), 5000.0)
    lo, hi = body_range(x)
    air = float(x[..., :2, :].median())  # the top rows are air
    assert lo > air + 0.1 and hi <= 1.0
    edges = signal_bins(x, 8)
    assert edges[0] == pytest.approx(lo) and np.all(np.diff(edges) > 0)
    # dark-background convention flipped: the air is now bright and still left out
    lo2, hi2 = body_range(-x)
    assert hi2 < -air - 0.1


def test_same_images_same_curve_and_bad_input():
    x, _ = xray(range(3), 5000.0)
    edges = signal_bins(x, 4)
    with pytest.raises(MedShiftError, match="increasing"):
        noise_curve(x, edges[::-1])
    with pytest.raises(MedShiftError, match="different signal bins"):
        curve_deviation(noise_curve(x, edges), noise_curve(x, signal_bins(x, 5)))
    with pytest.raises(MedShiftError, match="8x8"):
        noise_curve(x[..., :4, :4], edges)
