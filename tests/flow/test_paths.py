"""The SB path and target against their closed forms (and the sigma -> 0 limit)."""

import math

import pytest
import torch

from medshift_fast.flow import CouplingConfig, SBFlowMatcher, sample_t, sb_sample_xt, sb_target


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.5, 1.0])
def test_target_matches_formula_in_terms_of_xt(sigma):
    g = torch.Generator().manual_seed(0)
    x0, x1, z = (torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = sample_t(64, generator=g).double()
    xt = sb_sample_xt(x0, x1, t, sigma, z)
    u = sb_target(x0, x1, t, sigma, z)
    tb = t.view(-1, 1, 1, 1)
    # DESIGN.md's form: u = x1 - x0 + (1-2t)/(2t(1-t)) (x_t - t x1 - (1-t) x0)
    u_ref = x1 - x0 + (1 - 2 * tb) / (2 * tb * (1 - tb)) * (xt - tb * x1 - (1 - tb) * x0)
    torch.testing.assert_close(u, u_ref, rtol=1e-9, atol=1e-9)
    # and x_t's mean/variance: E[x_t] = t x1 + (1-t) x0, Var = sigma^2 t (1-t)
    torch.testing.assert_close(
        xt - (tb * x1 + (1 - tb) * x0), sigma * torch.sqrt(tb * (1 - tb)) * z
    )


def test_sigma_zero_is_straight_ocfm():
    x0, x1 = torch.randn(8, 5), torch.randn(8, 5)
    t = torch.rand(8)
    assert torch.equal(sb_target(x0, x1, t, 0.0, None), x1 - x0)
    torch.testing.assert_close(
        sb_sample_xt(x0, x1, t, 0.0, None), t[:, None] * x1 + (1 - t[:, None]) * x0
    )
    # continuity: a tiny sigma converges to the sigma = 0 path
    z = torch.randn(8, 5)
    t = torch.full((8,), 0.3)
    for s in (1e-3, 1e-6):
        err = (sb_target(x0, x1, t, s, z) - (x1 - x0)).abs().max()
        assert err < 10 * s


def test_target_finite_near_endpoints():
    t = sample_t(100000, generator=torch.Generator().manual_seed(1))
    assert float(t.min()) > 0 and float(t.max()) < 1
    x0, x1, z = torch.randn(3, 100000, 1).unbind(0)
    u = sb_target(x0, x1, t, 1.0, z)
    assert torch.isfinite(u).all()


def test_brownian_bridge_statistics():
    # Monte-Carlo check of the marginal variance sigma^2 t(1-t) at fixed endpoints.
    n, sigma = 200000, 0.7
    g = torch.Generator().manual_seed(3)
    x0 = torch.zeros(n, 1)
    x1 = torch.ones(n, 1)
    t = torch.full((n,), 0.25)
    xt = sb_sample_xt(x0, x1, t, sigma, torch.randn(n, 1, generator=g))
    assert abs(float(xt.mean()) - 0.25) < 0.01
    assert abs(float(xt.var()) - sigma**2 * 0.25 * 0.75) < 0.01


def test_matcher_labels_travel_with_x1_and_dropout():
    g = torch.Generator().manual_seed(0)
    # Each class has a distinct constant image so we can recover the label from x1.
    y = torch.arange(6) % 3
    x1 = y.float().view(-1, 1, 1, 1).expand(6, 1, 4, 4).clone() - 1.0
    m = SBFlowMatcher(3, CouplingConfig(sigma=0.1, sampling="multinomial"), p_uncond=0.0)
    fb = m(x1, y, generator=g)
    assert torch.equal((fb.x1[:, 0, 0, 0] + 1).round().long(), fb.y)
    m = SBFlowMatcher(3, CouplingConfig(sigma=0.1), p_uncond=0.5)
    ys = torch.cat([m(x1, y, generator=g).y for _ in range(200)])
    frac_null = float((ys == 3).float().mean())
    assert 0.4 < frac_null < 0.6
    assert math.isfinite(float(fb.u_t.abs().max()))
