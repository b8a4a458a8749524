"""ops.sinkhorn / ops.cost Triton kernels against the reference.

On the CPU they run under TRITON_INTERPRET=1 (tests/conftest.py), where every tile op costs about
a millisecond: tiny shapes and few iterations (the interpreter blocks are 32 wide, so 37 x 53
still runs the multi-block loops and masked tails). The `cuda` tests repeat them at real sizes.
"""

from __future__ import annotations

import pytest
import torch
from test_sinkhorn import assert_matches, check_backend, make_problem

from medshift_fast import _backend, ops
from medshift_fast.ops.reference import pairwise_sqdist_ref, sinkhorn_ref

pytestmark = pytest.mark.triton


def _kern():
    return _backend.import_kernels("sinkhorn")


def _run(cost, eps, a, b, max_iter, tol, fused, f0=None, g0=None):
    import importlib

    sk = importlib.import_module("medshift_fast.ops.sinkhorn")
    C, la, lb, f, g = sk._prepare(cost, a, b, f0, g0)
    lp, f, g, err, n = _kern().sinkhorn_log(C, la, lb, f, g, eps, max_iter, tol, 10, fused=fused)
    return sk._result(cost, lp, f, g, n, err)


# (K, N, M, eps / mean cost, uniform, max_iter, tol)
CASES = [
    (1, 1, 1, 0.1, True, 3, 0.0),
    (3, 7, 5, 1e-3, False, 12, 0.0),
    (1, 37, 53, 0.05, False, 12, 0.0),
    (3, 20, 33, 10.0, True, 30, 1e-5),
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "tiled"])
@pytest.mark.parametrize("K,N,M,rel,uniform,max_iter,tol", CASES)
def test_triton_matches_reference(K, N, M, rel, uniform, max_iter, tol, fused):
    cost, eps, a, b = make_problem(K, N, M, rel, uniform)
    res = _run(cost, eps, a, b, max_iter, tol, fused)
    assert_matches(res, sinkhorn_ref(cost, eps, a, b, max_iter=max_iter, tol=tol), cost, eps,
                   tol=tol)


def test_triton_public_dispatch_low_precision_and_warm_start():
    check_backend("triton", 3, 7, 5, 0.05, True, 8, 0.0, dtype=torch.bfloat16)
    check_backend("triton", 1, 9, 6, 0.05, False, 20, 1e-6, dtype=torch.float16, warm=True)


def test_triton_fused_tops_up_early_stoppers():
    """Problem 0 converges at the first check, problem 1 later: the fused kernel stops each on
    its own, then tops problem 0 up to the batch's count, which is what the reference does."""
    cost, eps, _, _ = make_problem(2, 9, 12, 0.3)
    cost = cost.clone()
    cost[0] *= 1e-3
    ref = sinkhorn_ref(cost, eps, max_iter=200, tol=1e-5)
    assert ref.n_iter == 20 and sinkhorn_ref(cost[:1], eps, max_iter=200, tol=1e-5).n_iter == 10
    assert_matches(_run(cost, eps, None, None, 200, 1e-5, True), ref, cost, eps)


@pytest.mark.parametrize("N,M,D,dtype", [(5, 7, 3, torch.float32), (33, 40, 70, torch.float32),
                                         (9, 4, 37, torch.bfloat16)])
def test_triton_pairwise_sqdist(N, M, D, dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(N, D, generator=g).to(dtype)
    x1 = torch.randn(M, D, generator=g).to(dtype)
    got = ops.pairwise_sqdist(x0, x1, backend="triton")
    want = pairwise_sqdist_ref(x0, x1)  # fp32 math on the same rounded inputs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.max()))


def test_triton_conditional_sampling_is_gumbel_max():
    """Each row's draws follow P[i, :] / a_i: 1000 rows of one 4-column conditional."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    lp = (p.log() - 8.0).expand(1000, 4).contiguous()  # unnormalised rows are fine
    gen = torch.Generator().manual_seed(0)
    i, j = ops.sample_plan(lp, "conditional", generator=gen, backend="triton")
    assert torch.equal(i, torch.arange(1000))
    freq = torch.bincount(j, minlength=4).float() / 1000
    sd = (p * (1 - p) / 1000).sqrt()
    assert bool(((freq - p).abs() <= 4 * sd).all()), freq
    # The same generator state gives the same draws; another one, different draws.
    i2, j2 = ops.sample_plan(lp, "conditional", generator=torch.Generator().manual_seed(0),
                             backend="triton")
    assert torch.equal(j, j2)
    _, j3 = ops.sample_plan(lp, "conditional", generator=torch.Generator().manual_seed(1),
                            backend="triton")
    assert not torch.equal(j, j3)


def test_device_multinomial_sampling():
    """Inverse-CDF draws of (i, j) follow the whole (normalised) plan."""
    p = torch.tensor([[0.4, 0.1, 0.0], [0.05, 0.25, 0.2]])
    lp = p.log() + 3.0
    i, j = ops.sample_plan(lp, "multinomial", n=20000, generator=torch.Generator().manual_seed(1),
                           backend="triton")
    assert i.dtype == torch.int64 and i.shape == (20000,)
    freq = torch.bincount(i * 3 + j, minlength=6).float().reshape(2, 3) / 20000
    sd = (p * (1 - p) / 20000).sqrt()
    assert bool(((freq - p).abs() <= 4 * sd + 1e-9).all()), freq
    assert int(freq[0, 2]) == 0
    with pytest.raises(FloatingPointError):
        ops.sample_plan(torch.full((2, 2), float("nan")), "multinomial", backend="triton")
