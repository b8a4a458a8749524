"""Hallucination measure: a blob a method is forced to invent is counted, at its place; the
identity, a mild denoise, a global intensity change and a perfect translation count ~0."""

import numpy as np
import pytest
import torch
from _xray import xray
from scipy.ndimage import gaussian_filter

from medshift_fast.errors import MedShiftError
from medshift_fast.translate.hallucination import (
    hallucination_batch,
    hallucination_mask,
    hallucination_stats,
    label_components,
)


@pytest.fixture(scope="module")
def pair():
    """Low-dose sources and their pixel-aligned high-dose views (a perfect denoiser)."""
    low, _ = xray(range(6), 1500.0, views=2, size=96, seed=3)
    high, _ = xray(range(6), 20000.0, views=2, size=96, seed=4)
    return low, high


def _blob(size, cy, cx, sigma):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))


def _local_noise(x, cy, cx, r=6):
    """Robust std of the source's second difference around (cy, cx)."""
    d = x[1:-1, 1:-1] * 4 - 2 * (x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:]) + (
        x[:-2, :-2] + x[:-2, 2:] + x[2:, :-2] + x[2:, 2:])
    w = d[cy - 1 - r:cy - 1 + r, cx - 1 - r:cx - 1 + r] / 6
    return 1.4826 * float((w - w.median()).abs().median())


def test_identity_denoisers_intensity_map_and_the_true_view_count_nothing(pair):
    low, high = pair
    blurred = torch.from_numpy(gaussian_filter(low.numpy(), (0, 0, 0.7, 0.7)))
    smoothed = torch.from_numpy(gaussian_filter(low.numpy(), (0, 0, 2.0, 2.0)))  # merges edges
    gamma = ((low + 1) / 2) ** 0.8 * 2 - 1  # a global monotone intensity change
    for out in (low, blurred, smoothed, gamma, high):
        counts = [s["count"] for s in hallucination_batch(low, out)]
        assert np.mean(counts) <= 0.1, counts
    assert hallucination_stats(low[0], low[0])["max_z"] == 0.0  # identity: exactly nothing


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_a_forced_blob_is_counted_where_it_is(pair, sigma):
    low, high = pair
    found = 0
    for i in range(low.shape[0]):
        cy, cx = 48 + (i % 3 - 1) * 8, 48 + (i // 3 - 1) * 8  # inside the head
        amp = 10.0 * _local_noise(low[i, 0].double(), cy, cx)
        out = high[i, 0] + amp * _blob(96, cy, cx, sigma)
        hit, z, _ = hallucination_mask(low[i, 0], out)
        lab, n = label_components(hit)
        near = lab[cy - 3:cy + 4, cx - 3:cx + 4]
        found += bool((near > 0).any())
        assert n - int(hallucination_stats(low[i, 0], high[i, 0])["count"]) <= 1 + int(
            (near > 0).any())
    assert found >= low.shape[0] - 1, found  # every blob (one may sit on a source structure)


def test_a_dark_blob_is_counted_too(pair):
    low, high = pair
    amp = 10.0 * _local_noise(low[0, 0].double(), 48, 48)
    s = hallucination_stats(low[0], high[0] - amp * _blob(96, 48, 48, 2.0))
    assert s["count"] >= 1 and s["area_px"] >= 3 and s["max_z"] > 4


def test_label_components_counts_8_connected_regions():
    m = torch.zeros(10, 10, dtype=torch.bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one region
    m[5:7, 5:9] = True
    m[9, 0] = True
    lab, n = label_components(m)
    assert n == 3 and lab[1, 1] == lab[2, 2] and lab[0, 0] == 0
    assert label_components(torch.zeros(4, 4, dtype=torch.bool))[1] == 0


def test_bad_input_is_refused(pair):
    low, high = pair
    with pytest.raises(MedShiftError, match="same shape"):
        hallucination_stats(low[0], high[0, :, :-1])
    with pytest.raises(MedShiftError, match="NaN"):
        hallucination_stats(low[0], high[0] * float("nan"))
    with pytest.raises(MedShiftError, match="one grayscale image"):
        hallucination_stats(low[:2], high[:2])
    with pytest.raises(MedShiftError, match="support"):
        hallucination_stats(low[0], high[0], support=2.0)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_spectral_filters_equal_direct_convolution(sigma):
    """The FFT path (one transform per image, every filter a product) is the reflect-padded
    separable convolution: the LoG and the Gaussian against their direct versions."""
    from medshift_fast.translate.hallucination import (
        _blur_terms,
        _log_terms,
        _Spectrum,
        gaussian_blur,
        log_response,
    )

    x = torch.randn(70, 53, generator=torch.Generator().manual_seed(0))
    spec = _Spectrum(x, 20)
    direct = log_response(x.view(1, 1, 70, 53), sigma)[0, 0]
    torch.testing.assert_close(spec.apply(spec.transfer(_log_terms(sigma))), direct,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(spec.apply(spec.transfer(_blur_terms(sigma))),
                               gaussian_blur(x.view(1, 1, 70, 53), sigma)[0, 0], atol=1e-5,
                               rtol=0)


def test_torch_interp_is_numpys_including_near_equal_points():
    """``_interp`` (the detector's parallel np.interp) agrees with NumPy, also where the points
    differ only in the 12th digit (quantile_match's quantiles of a clipped plateau): a value on
    such a run maps to the run's first point, as in NumPy, not its last."""
    from medshift_fast.translate.hallucination import _interp

    g = np.random.default_rng(3)
    xp = np.sort(g.normal(size=40))
    xp[10:20] = xp[10] + np.arange(10) * 1e-12  # a plateau's quantiles, strictly increasing
    fp = np.cumsum(g.uniform(0.0, 1.0, size=40))
    x = np.concatenate([g.normal(size=5000) * 2, np.full(50, xp[10])]).astype(np.float32)
    want = np.interp(x.astype(np.float64), xp, fp)
    got = _interp(torch.from_numpy(x), xp, fp).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
