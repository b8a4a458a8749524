"""Minibatch OT/SB coupling: correct for every sigma (no silent fallback to independent pairs)."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from medshift_fast import ops
from medshift_fast.flow import CouplingConfig, couple_indices


def _exact_perm(x0, x1):
    c = ops.pairwise_sqdist(x0, x1).double().numpy()
    r, col = linear_sum_assignment(c)
    return torch.as_tensor(col[np.argsort(r)])


def test_pairwise_sqdist_matches_cdist():
    a, b = torch.randn(7, 3, 5, 5), torch.randn(11, 3, 5, 5)
    ref = torch.cdist(a.flatten(1).double(), b.flatten(1).double()) ** 2
    torch.testing.assert_close(ops.pairwise_sqdist(a, b).double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("sampling", ["conditional", "assignment", "multinomial"])
def test_small_sigma_recovers_exact_ot_on_image_sized_costs(sampling):
    # 32x32 images: costs ~ 2000; eps = 2 sigma^2 = 0.02 -> torchcfm's exp(-C/eps) underflows.
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 1, 32, 32, generator=g)
    x1 = torch.rand(16, 1, 32, 32, generator=g) * 2 - 1
    perm = _exact_perm(x0, x1)
    cfg = CouplingConfig(method="sinkhorn", sigma=0.1, sampling=sampling, max_iter=2000, tol=1e-6)
    i, j = couple_indices(x0, x1, cfg, generator=g)
    if sampling == "multinomial":
        # every drawn pair must be an OT pair
        assert torch.equal(perm[i], j)
    else:
        assert torch.equal(i, torch.arange(16))
        assert torch.equal(j, perm)


def test_exact_coupling_and_sigma_zero_are_assignment():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(9, 20, generator=g), torch.randn(9, 20, generator=g)
    perm = _exact_perm(x0, x1)
    for cfg in (CouplingConfig(method="exact"), CouplingConfig(method="sinkhorn", sigma=0.0)):
        i, j = couple_indices(x0, x1, cfg)
        assert torch.equal(j[torch.argsort(i)], perm)


def test_plan_not_degenerate_at_tiny_relative_eps():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(32, 1, 16, 16, generator=g), torch.randn(32, 1, 16, 16, generator=g)
    c = ops.pairwise_sqdist(x0, x1)
    res = ops.sinkhorn(c, 1e-3 * float(c.mean()), max_iter=5000, tol=1e-6)
    p = res.plan
    assert torch.isfinite(res.log_plan).all() and torch.isfinite(res.f).all()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-4)
    # the entropic plan's transport cost approaches the exact OT cost (mean over a permutation)
    perm = _exact_perm(x0, x1)
    ot_cost = float(c[torch.arange(32), perm].mean())
    assert float((p * c).sum()) == pytest.approx(ot_cost, rel=2e-3)
    assert float(res.marginal_error) < 1e-4


def test_large_sigma_approaches_independent_pairs():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    c = ops.pairwise_sqdist(x0, x1)
    res = ops.sinkhorn(c, 1e6, max_iter=50)
    torch.testing.assert_close(res.plan, torch.full((8, 8), 1 / 64), rtol=1e-3, atol=1e-6)
