"""ops.sinkhorn: every CPU backend against the reference, and the reference against POT.

Shared by the backend test files: ``check_backend`` runs one case on a backend and compares the
log-plan and the potentials with ``sinkhorn_ref`` run on the same (rounded) fp32 cost. fp32
rounding of C / eps alone moves the reference's log-plan by ~1e-7 x max|C / eps|, so log-plans
and potentials (in units of eps) are compared after dividing by s = max(1, max|C| / eps) with the
fp32 tolerance of tests/utils.py.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from utils import TOL

from medshift_fast import _backend, ops
from medshift_fast.errors import BackendUnavailableError, MedShiftError
from medshift_fast.ops.reference import sinkhorn_ref

sk = importlib.import_module("medshift_fast.ops.sinkhorn")


def _cpp_ok() -> bool:
    return sk._c_has("cpu")


needs_cpp = pytest.mark.skipif(not _cpp_ok(), reason="extension without the sinkhorn_log op")


def make_problem(K, N, M, rel_eps, uniform=True, dtype=torch.float32, seed=0, dim=5):
    """(cost, eps, a, b): squared distances of Gaussian clouds; eps relative to the mean cost."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(K, N, dim, generator=g)
    x1 = torch.randn(K, M, dim, generator=g) + 0.5
    cost = (torch.cdist(x0, x1) ** 2).to(dtype)
    if K == 1:
        cost = cost[0]
    eps = rel_eps * float(cost.float().mean())
    a = b = None
    if not uniform:
        a = torch.rand(K, N, generator=g) + 0.2
        b = torch.rand(M, generator=g) + 0.2  # one (M,) marginal shared by the batch
        a, b = a / a.sum(-1, keepdim=True), b / b.sum()
        if K == 1:
            a = a[0]
    return cost, eps, a, b


def assert_matches(res, ref, cost, eps, dtype=torch.float32, tol=0.0, check_every=10):
    s = max(1.0, float(cost.float().abs().max()) / eps)
    rtol, atol = TOL[torch.float32] if dtype == torch.float32 else TOL[dtype]
    if tol > 0 and res.n_iter != ref.n_iter:
        # Each backend computes the stopping error in fp32 with its own exp and summation order;
        # when the true error crosses tol right at a check, the two estimates may fall on either
        # side of it (seen on an H100: 270 vs 280 iterations). Then both must be within tol and
        # one check apart; the plans still agree to the tolerances below.
        assert abs(res.n_iter - ref.n_iter) == check_every, (res.n_iter, ref.n_iter)
        assert bool((res.marginal_error <= 2 * tol).all()), res.marginal_error
        assert bool((ref.marginal_error <= 2 * tol).all()), ref.marginal_error
    else:
        assert res.n_iter == ref.n_iter
    for name in ("log_plan", "f", "g"):
        got, want = getattr(res, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == torch.float32, name
        assert torch.isfinite(got).all(), name
        unit = s if name == "log_plan" else s * eps
        torch.testing.assert_close(got.cpu() / unit, want.cpu() / unit, rtol=rtol, atol=atol,
                                   msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(res.marginal_error.cpu(), ref.marginal_error.cpu(), rtol=1e-3,
                               atol=2e-5)


def check_backend(backend, K, N, M, rel_eps, uniform=True, max_iter=60, tol=0.0,
                  dtype=torch.float32, device="cpu", warm=False):
    cost, eps, a, b = make_problem(K, N, M, rel_eps, uniform, dtype)
    cost = cost.to(device)
    a = None if a is None else a.to(device)
    b = None if b is None else b.to(device)
    f0 = g0 = None
    if warm:  # warm start from a short reference solve
        w = sinkhorn_ref(cost.float(), eps, a, b, max_iter=7, tol=0)
        f0, g0 = w.f, w.g
    ref = sinkhorn_ref(cost.float(), eps, a, b, max_iter=max_iter, tol=tol, f_init=f0, g_init=g0)
    res = ops.sinkhorn(cost, eps, a, b, max_iter=max_iter, tol=tol, backend=backend, f_init=f0,
                       g_init=g0)
    assert_matches(res, ref, cost, eps, dtype, tol)
    return res


# Cases: (K, N, M, eps / mean cost, uniform, max_iter, tol)
CASES = [
    (1, 1, 1, 0.1, True, 20, 0.0),
    (1, 1, 7, 0.05, False, 20, 0.0),
    (3, 7, 5, 1e-3, True, 80, 0.0),
    (3, 37, 53, 0.05, False, 200, 1e-6),
    (1, 37, 53, 10.0, True, 50, 1e-5),
    (1, 256, 199, 1e-3, False, 40, 0.0),
    (3, 256, 256, 0.05, True, 30, 0.0),  # batch-parallel: one thread per problem
    (2, 400, 333, 2e-3, False, 30, 1e-4),  # N * M >= 2^17: a thread team inside each problem
]


@needs_cpp
@pytest.mark.ext
@pytest.mark.parametrize("K,N,M,rel,uniform,max_iter,tol", CASES)
def test_cpp_matches_reference(K, N, M, rel, uniform, max_iter, tol):
    check_backend("cpp", K, N, M, rel, uniform, max_iter, tol)


@needs_cpp
@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_low_precision_inputs(dtype):
    check_backend("cpp", 3, 37, 53, 0.05, True, 50, 0.0, dtype=dtype)


@needs_cpp
@pytest.mark.ext
def test_cpp_warm_start_and_tol_semantics():
    res = check_backend("cpp", 3, 37, 53, 0.05, False, 500, 1e-5, warm=True)
    assert 0 < res.n_iter < 500 and res.n_iter % 10 == 0
    assert bool((res.marginal_error <= 1e-5).all())
    # tol <= 0 runs exactly max_iter iterations, whatever the error.
    cost, eps, _, _ = make_problem(1, 9, 11, 1.0)
    assert ops.sinkhorn(cost, eps, max_iter=13, tol=0.0, backend="cpp").n_iter == 13
    assert ops.sinkhorn(cost, eps, max_iter=13, tol=-1.0, backend="cpp").n_iter == 13
    # Restarting from converged potentials stops at the first check.
    r = ops.sinkhorn(cost, eps, max_iter=1000, tol=1e-6, backend="cpp")
    r2 = ops.sinkhorn(cost, eps, max_iter=1000, tol=1e-6, backend="cpp", f_init=r.f, g_init=r.g)
    assert r2.n_iter == 10
    # max_iter = 0 returns the warm start.
    r0 = ops.sinkhorn(cost, eps, max_iter=0, backend="cpp", f_init=r.f, g_init=r.g)
    assert r0.n_iter == 0 and torch.equal(r0.f, r.f)


@needs_cpp
@pytest.mark.ext
def test_cpp_eps_scaling_and_auto():
    cost, eps, a, b = make_problem(3, 40, 30, 2e-3, uniform=False)
    r = ops.sinkhorn(cost, eps, a, b, max_iter=400, tol=1e-4, eps_scaling=4.0, backend="cpp")
    ref = ops.sinkhorn(cost, eps, a, b, max_iter=400, tol=1e-4, eps_scaling=4.0,
                       backend="reference")
    assert_matches(r, ref, cost, eps)
    with _backend.use_backend("auto"):
        assert sk._impl(_backend.resolve("sinkhorn", "cpu", sk._supported(cost))) is sk._sinkhorn_c


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=[needs_cpp,
                                                                             pytest.mark.ext])])
@pytest.mark.parametrize("rel", [1e-3, 1e-4])
def test_tiny_eps_on_image_sized_costs(backend, rel):
    """No NaN/Inf and no zero plan at eps = 1e-3 / 1e-4 x the mean cost of 3x64x64 images
    (where torchcfm's exp(-C / eps) underflows to an all-zero kernel)."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(24, 3, 64, 64, generator=g)
    x1 = torch.rand(17, 3, 64, 64, generator=g) * 2 - 1
    cost = ops.pairwise_sqdist(x0, x1)
    eps = rel * float(cost.mean())
    assert float(torch.exp(-cost / eps).sum()) == 0.0  # the anchor's trap
    r = ops.sinkhorn(cost, eps, max_iter=300, tol=1e-5, backend=backend)
    for t in (r.log_plan, r.f, r.g, r.marginal_error):
        assert torch.isfinite(t).all()
    p = r.plan
    # fp32 rounds log P by ~6e-8 x max|C / eps| (~1e-3 here at 1e-4): the marginals' floor.
    floor = 1e-7 * float(cost.max()) / eps
    assert abs(float(p.sum()) - 1.0) < 1e-5 + floor
    torch.testing.assert_close(p.sum(0) * 17, torch.ones(17), rtol=0, atol=1e-5 + 2 * floor)
    assert float(r.marginal_error) < 1e-2
    assert int((p > 1e-3).sum()) < 24 * 17 // 2  # concentrated, not the independent coupling


# ------------------------------------------------------------------------------------ vs POT
def _ot():
    """POT, imported per test (a module-level importorskip would skip every test of this file
    and of the files that import its helpers when POT is missing)."""
    return pytest.importorskip("ot")


def _backends():
    return ["reference", pytest.param("cpp", marks=[needs_cpp, pytest.mark.ext])]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("K,N,M,uniform", [(1, 1, 6, True), (3, 37, 53, False), (1, 64, 31, True)])
def test_vs_pot_sinkhorn_log(backend, K, N, M, uniform):
    ot = _ot()
    cost, eps, a, b = make_problem(K, N, M, 0.1, uniform)
    r = ops.sinkhorn(cost, eps, a, b, max_iter=2000, tol=1e-6, backend=backend)
    C = cost.reshape(K, N, M).double().numpy()
    A = (torch.full((K, N), 1 / N) if a is None else a.reshape(-1, N).expand(K, N)).double()
    B = (torch.full((K, M), 1 / M) if b is None else b.reshape(-1, M).expand(K, M)).double()
    P = r.plan.reshape(K, N, M).double().numpy()
    for k in range(K):
        P_pot = ot.sinkhorn(A[k].numpy(), B[k].numpy(), C[k], eps, method="sinkhorn_log",
                            numItermax=3000, stopThr=1e-9)
        assert np.abs(P[k] - P_pot).sum() < 1e-5, k


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("K,N,M", [(1, 12, 12), (3, 9, 13)])
def test_small_eps_limit_is_emd(backend, K, N, M):
    """As eps -> 0 the entropic plan's cost tends to the exact OT cost (ot.emd): 0 <= <C, P_eps>
    - OT <= eps log(N M) (+ rounding), and for N == M its rows pick the emd assignment."""
    ot = _ot()
    cost, eps, _, _ = make_problem(K, N, M, 1e-3)
    r = ops.sinkhorn(cost, eps, max_iter=3000, tol=1e-6, eps_scaling=2.0, backend=backend)
    C = cost.reshape(K, N, M).double()
    P = r.plan.reshape(K, N, M).double()
    for k in range(K):
        G = ot.emd(np.full(N, 1 / N), np.full(M, 1 / M), C[k].numpy())
        ot_cost = float((C[k] * torch.from_numpy(G)).sum())
        gap = float((C[k] * P[k]).sum()) - ot_cost
        assert -1e-4 * ot_cost <= gap <= eps * np.log(N * M) + 1e-4 * ot_cost, (k, gap)
        if N == M:
            assert torch.equal(P[k].argmax(1), torch.from_numpy(G).argmax(1))


# ------------------------------------------------------------------------------- errors, dispatch
def test_user_errors():
    cost = torch.rand(5, 4)
    with pytest.raises(MedShiftError, match="a must have shape"):
        ops.sinkhorn(cost, 0.1, a=torch.full((4,), 0.25))
    with pytest.raises(MedShiftError, match="g_init must have shape"):
        ops.sinkhorn(cost, 0.1, g_init=torch.zeros(5))
    with pytest.raises(MedShiftError, match="eps"):
        ops.sinkhorn(cost, 0.0)
    with pytest.raises(MedShiftError, match="check_every"):
        ops.sinkhorn(cost, 0.1, check_every=0)
    with pytest.raises(BackendUnavailableError):
        ops.sinkhorn(cost, 0.1, backend="cuda")


def test_reference_check_every_matches_default():
    cost, eps, _, _ = make_problem(1, 9, 11, 0.3)
    r = ops.sinkhorn(cost, eps, tol=1e-6, backend="reference", check_every=1)
    r10 = ops.sinkhorn(cost, eps, tol=1e-6, backend="reference")
    assert r.n_iter <= r10.n_iter and r10.n_iter % 10 == 0
    assert float(r.marginal_error) <= 1e-6
