"""Log-domain Sinkhorn, the squared-distance cost and Gumbel-max plan sampling in Triton.

Sinkhorn (spec: ops/reference.py::sinkhorn_ref), for K problems of size N x M:
    f_i = eps (log a_i - LSE_j((g_j - C_ij) / eps)),
    g_j = eps (log b_j - LSE_i((f_i - C_ij) / eps))
Each log-sum-exp is one streaming pass over C with an online (running max, rescaled sum) update,
so C / eps is never stored and fp16/bf16 costs are read as they are (fp32 arithmetic).

Two paths:
    fused (N, M <= FUSED_MAX): ONE launch, one program per problem running every iteration, with
        the convergence test on the device every ``check_every`` iterations; no host sync until
        the end. A problem that converges stops; the launcher then tops up the others' iteration
        counts to the batch maximum (a second launch warm-started from their g, exact because
        the f update only depends on g), which gives the reference's "stop when every problem
        is within tol" result.
    tiled (larger): one launch per half-iteration over row/column blocks of all K problems,
        the error test every ``check_every`` iterations (one host sync per check).

Launched only through ``medshift_fast.ops.sinkhorn`` / ``ops.cost``. Under TRITON_INTERPRET=1
(CPU tests) small blocks are used so that the multi-block loops run at tiny shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from medshift_fast.kernels._interpreter import patch_interpreter

from medshift_fast import _backend

__all__ = ["sinkhorn_log", "pairwise_sqdist", "gumbel_argmax_rows", "FUSED_MAX"]

FUSED_MAX = 1024  # one program per problem up to this N and M
_INTERPRET = _backend.triton_interpret()


if _INTERPRET:
    patch_interpreter()
    # Each interpreted tile op costs ~1 ms whatever its size: few, mid-sized tiles (shapes above
    # 32 still run the multi-block loops and their masked tails).
    _FUSED_BLOCK = (32, 32, 4)  # (BLOCK_N, BLOCK_M, num_warps)
    _ROW_BLOCK = (32, 32, 4)
    _COL_BLOCK = (32, 32, 4)
    _COST_BLOCK = (32, 32, 32, 4)  # (BLOCK_I, BLOCK_J, BLOCK_D, num_warps)
else:  # pragma: no cover - GPU only (untuned: no GPU was available when this was written)
    _FUSED_BLOCK = (32, 128, 8)
    _ROW_BLOCK = (16, 256, 4)
    _COL_BLOCK = (64, 64, 4)
    _COST_BLOCK = (64, 64, 32, 4)


# ------------------------------------------------------------------------------- LSE blocks
@triton.jit
def _f_block(Cp, Gp, LAp, Fp, i0, N, M, eps, inv_eps, BLOCK_N: tl.constexpr,
             BLOCK_M: tl.constexpr):
    """f_i for rows i0 .. i0 + BLOCK_N of one problem (online LSE over column tiles)."""
    rows = i0 + tl.arange(0, BLOCK_N)
    rmask = rows < N
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    for j0 in range(0, M, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        cmask = cols < M
        g = tl.load(Gp + cols, mask=cmask, other=0.0)
        c = tl.load(Cp + rows[:, None] * M + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        x = (g * inv_eps)[None, :] - c * inv_eps
        x = tl.where(cmask[None, :], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_ok = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no NaN
        s = s * tl.exp(m - m_ok) + tl.sum(tl.exp(x - m_ok[:, None]), 1)
        m = m_new
    la = tl.load(LAp + rows, mask=rmask, other=0.0)
    tl.store(Fp + rows, eps * (la - (m + tl.log(s))), mask=rmask)


@triton.jit
def _g_block(Cp, Fp, LBp, Gp, j0, N, M, eps, inv_eps, BLOCK_N: tl.constexpr,
             BLOCK_M: tl.constexpr):
    """g_j for columns j0 .. j0 + BLOCK_M of one problem (online LSE over row tiles)."""
    cols = j0 + tl.arange(0, BLOCK_M)
    cmask = cols < M
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    for i0 in range(0, N, BLOCK_N):
        rows = i0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        f = tl.load(Fp + rows, mask=rmask, other=0.0)
        c = tl.load(Cp + rows[:, None] * M + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        x = (f * inv_eps)[:, None] - c * inv_eps
        x = tl.where(rmask[:, None], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 0))
        m_ok = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_ok) + tl.sum(tl.exp(x - m_ok[None, :]), 0)
        m = m_new
    lb = tl.load(LBp + cols, mask=cmask, other=0.0)
    tl.store(Gp + cols, eps * (lb - (m + tl.log(s))), mask=cmask)


@triton.jit
def _err_block(Cp, Fp, Gp, LAp, LPp, i0, N, M, inv_eps, WRITE: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """sum_i |sum_j exp((f_i + g_j) / eps - C_ij / eps) - a_i| over rows i0 .. i0 + BLOCK_N;
    with WRITE, also stores those log-plan entries."""
    rows = i0 + tl.arange(0, BLOCK_N)
    rmask = rows < N
    f = tl.load(Fp + rows, mask=rmask, other=0.0)
    s = tl.zeros([BLOCK_N], tl.float32)
    for j0 in range(0, M, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        cmask = cols < M
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(Gp + cols, mask=cmask, other=0.0)
        offs = rows[:, None] * M + cols[None, :]
        c = tl.load(Cp + offs, mask=mask, other=0.0).to(tl.float32)
        lp = (f[:, None] + g[None, :]) * inv_eps - c * inv_eps
        if WRITE:
            tl.store(LPp + offs, lp, mask=mask)
        s += tl.sum(tl.exp(tl.where(mask, lp, float("-inf"))), 1)
    a = tl.exp(tl.load(LAp + rows, mask=rmask, other=0.0))
    return tl.sum(tl.where(rmask, tl.abs(s - a), 0.0), 0)


# ------------------------------------------------------------------------------- fused path
@triton.jit
def _sinkhorn_fused(C, LA, LB, F, G, LP, ERR, NIT, ITERS, N, M, eps, inv_eps, max_iter, tol,
                    check_every, HAS_ITERS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    """One program = one problem, every iteration; convergence tested on the device."""
    pid = tl.program_id(0).to(tl.int64)
    Cp = C + pid * N * M
    LPp = LP + pid * N * M
    LAp = LA + pid * N
    Fp = F + pid * N
    LBp = LB + pid * M
    Gp = G + pid * M
    n_it = max_iter
    if HAS_ITERS:
        n_it = tl.load(ITERS + pid)
    it = 0
    done = 0
    while (it < n_it) & (done == 0):
        for i0 in range(0, N, BLOCK_N):
            _f_block(Cp, Gp, LAp, Fp, i0, N, M, eps, inv_eps, BLOCK_N, BLOCK_M)
        tl.debug_barrier()  # f (global, written by all warps) is read by every column block
        for j0 in range(0, M, BLOCK_M):
            _g_block(Cp, Fp, LBp, Gp, j0, N, M, eps, inv_eps, BLOCK_N, BLOCK_M)
        tl.debug_barrier()
        it += 1
        if tol > 0:
            if (it % check_every == 0) | (it == n_it):
                err = 0.0
                for i0 in range(0, N, BLOCK_N):
                    err += _err_block(Cp, Fp, Gp, LAp, LPp, i0, N, M, inv_eps, False, BLOCK_N,
                                      BLOCK_M)
                if err <= tol:
                    done = 1
    tl.store(NIT + pid, it)
    err = 0.0
    for i0 in range(0, N, BLOCK_N):
        err += _err_block(Cp, Fp, Gp, LAp, LPp, i0, N, M, inv_eps, True, BLOCK_N, BLOCK_M)
    tl.store(ERR + pid, err)


# ------------------------------------------------------------------------------- tiled path
@triton.jit
def _f_update(C, LA, F, G, N, M, eps, inv_eps, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    k = tl.program_id(1).to(tl.int64)
    _f_block(C + k * N * M, G + k * M, LA + k * N, F + k * N, tl.program_id(0) * BLOCK_N, N, M,
             eps, inv_eps, BLOCK_N, BLOCK_M)


@triton.jit
def _g_update(C, LB, F, G, N, M, eps, inv_eps, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    k = tl.program_id(1).to(tl.int64)
    _g_block(C + k * N * M, F + k * N, LB + k * M, G + k * M, tl.program_id(0) * BLOCK_M, N, M,
             eps, inv_eps, BLOCK_N, BLOCK_M)


@triton.jit
def _row_err(C, LA, F, G, LP, PART, N, M, inv_eps, WRITE: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_M: tl.constexpr):
    """Per-(problem, row block) partial errors (deterministic: summed by the launcher)."""
    k = tl.program_id(1).to(tl.int64)
    b = tl.program_id(0)
    e = _err_block(C + k * N * M, F + k * N, G + k * M, LA + k * N, LP + k * N * M, b * BLOCK_N,
                   N, M, inv_eps, WRITE, BLOCK_N, BLOCK_M)
    tl.store(PART + k * tl.num_programs(0) + b, e)


def sinkhorn_log(C, log_a, log_b, f0, g0, eps, max_iter, tol, check_every, fused=None):
    """Batched log-domain Sinkhorn.

    Args:
        C: (K, N, M) cost (fp32/fp16/bf16). log_a: (K, N), log_b: (K, M) fp32 log marginals.
        f0, g0: (K, N), (K, M) fp32 warm start. eps, max_iter, tol, check_every: as the reference.
        fused: force the one-launch path (True) or the tiled path (False); None picks by size.

    Returns:
        (log_plan (K, N, M), f (K, N), g (K, M), err (K), n_iter int).
    """
    K, N, M = C.shape
    C = C.contiguous()
    dev = C.device
    f = f0.to(torch.float32).clone().contiguous()
    g = g0.to(torch.float32).clone().contiguous()
    la, lb = log_a.contiguous(), log_b.contiguous()
    lp = torch.empty((K, N, M), device=dev, dtype=torch.float32)
    inv_eps = 1.0 / eps
    if fused is None:
        fused = N <= FUSED_MAX and M <= FUSED_MAX
    if fused:
        bn, bm, nw = _FUSED_BLOCK
        err = torch.empty(K, device=dev, dtype=torch.float32)
        nit = torch.empty(K, device=dev, dtype=torch.int32)
        _sinkhorn_fused[(K,)](C, la, lb, f, g, lp, err, nit, nit, N, M, eps, inv_eps,
                              max_iter, tol, check_every, HAS_ITERS=False, BLOCK_N=bn,
                              BLOCK_M=bm, num_warps=nw)
        n = nit.cpu()  # the one host sync
        n_max = int(n.max())
        if bool((n < n_max).any()):  # top up early stoppers to the batch's iteration count
            iters = (n_max - n).to(device=dev, dtype=torch.int32)
            _sinkhorn_fused[(K,)](C, la, lb, f, g, lp, err, nit, iters, N, M, eps, inv_eps,
                                  n_max, 0.0, check_every, HAS_ITERS=True, BLOCK_N=bn,
                                  BLOCK_M=bm, num_warps=nw)
        return lp, f, g, err, n_max
    rbn, rbm, rnw = _ROW_BLOCK
    cbn, cbm, cnw = _COL_BLOCK
    grid_f = (triton.cdiv(N, rbn), K)
    grid_g = (triton.cdiv(M, cbm), K)
    part = torch.empty((K, grid_f[0]), device=dev, dtype=torch.float32)
    it = 0
    while it < max_iter:
        _f_update[grid_f](C, la, f, g, N, M, eps, inv_eps, BLOCK_N=rbn, BLOCK_M=rbm,
                          num_warps=rnw)
        _g_update[grid_g](C, lb, f, g, N, M, eps, inv_eps, BLOCK_N=cbn, BLOCK_M=cbm,
                          num_warps=cnw)
        it += 1
        if tol > 0 and (it % check_every == 0 or it == max_iter):
            _row_err[grid_f](C, la, f, g, lp, part, N, M, inv_eps, WRITE=False, BLOCK_N=rbn,
                             BLOCK_M=rbm, num_warps=rnw)
            if bool((part.sum(1) <= tol).all()):
                break
    _row_err[grid_f](C, la, f, g, lp, part, N, M, inv_eps, WRITE=True, BLOCK_N=rbn,
                     BLOCK_M=rbm, num_warps=rnw)
    return lp, f, g, part.sum(1), it


# ------------------------------------------------------------------------------------- cost
@triton.jit
def _sqdist(X, Y, OUT, N, M, D, WIDEN: tl.constexpr, IEEE: tl.constexpr, BLOCK_I: tl.constexpr,
            BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """C_ij = |x_i|^2 + |y_j|^2 - 2 x_i . y_j for one tile: the norms accumulate in the same
    pass over D as the dot products (GEMM with the squared norms fused in), clamped at 0."""
    pi = tl.program_id(0)
    pj = tl.program_id(1)
    ri = pi * BLOCK_I + tl.arange(0, BLOCK_I)
    rj = pj * BLOCK_J + tl.arange(0, BLOCK_J)
    acc = tl.zeros([BLOCK_I, BLOCK_J], tl.float32)
    xn = tl.zeros([BLOCK_I], tl.float32)
    yn = tl.zeros([BLOCK_J], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + ri[:, None].to(tl.int64) * D + rd[None, :],
                    mask=(ri[:, None] < N) & (rd[None, :] < D), other=0.0)
        y = tl.load(Y + rj[:, None].to(tl.int64) * D + rd[None, :],
                    mask=(rj[:, None] < M) & (rd[None, :] < D), other=0.0)
        xf = x.to(tl.float32)
        yf = y.to(tl.float32)
        xn += tl.sum(xf * xf, 1)
        yn += tl.sum(yf * yf, 1)
        if WIDEN:
            acc += tl.dot(xf, tl.trans(yf), input_precision="ieee")
        elif IEEE:
            acc += tl.dot(x, tl.trans(y), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(y))
    c = tl.maximum(xn[:, None] + yn[None, :] - 2.0 * acc, 0.0)
    tl.store(OUT + ri[:, None].to(tl.int64) * M + rj[None, :], c,
             mask=(ri[:, None] < N) & (rj[None, :] < M))


def pairwise_sqdist(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) fp32 squared distances (fp32 inputs use IEEE fp32 dots)."""
    x0, x1 = x0.contiguous(), x1.contiguous()
    N, D = x0.shape
    M = x1.shape[0]
    out = torch.empty((N, M), device=x0.device, dtype=torch.float32)
    bi, bj, bd, nw = _COST_BLOCK
    fp32 = x0.dtype == torch.float32
    _sqdist[(triton.cdiv(N, bi), triton.cdiv(M, bj))](
        x0, x1, out, N, M, D, WIDEN=_INTERPRET, IEEE=fp32, BLOCK_I=bi, BLOCK_J=bj, BLOCK_D=bd,
        num_warps=nw)
    return out


# ------------------------------------------------------------------------------ plan sampling
@triton.jit
def _gumbel_argmax(LP, OUT, N, M, seed, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """j_i = argmax_j (log P_ij + G_ij), G_ij = -log(-log U_ij) from the counter-based Philox
    stream (seed, i * M + j): one draw from each row's conditional, no N x M noise in memory."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_N], tl.int32)
    for j0 in range(0, M, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        mask = rmask[:, None] & (cols[None, :] < M)
        offs = rows[:, None].to(tl.int64) * M + cols[None, :]
        lp = tl.load(LP + offs, mask=mask, other=float("-inf")).to(tl.float32)
        u = tl.rand(seed, offs.to(tl.int32))
        u = tl.minimum(tl.maximum(u, 1e-20), 1.0 - 1e-7)
        z = tl.where(mask, lp - tl.log(-tl.log(u)), float("-inf"))
        zmax = tl.max(z, 1)
        zarg = tl.argmax(z, 1).to(tl.int32) + j0
        take = zmax > best
        arg = tl.where(take, zarg, arg)
        best = tl.where(take, zmax, best)
    tl.store(OUT + rows, arg.to(tl.int64), mask=rmask)


def gumbel_argmax_rows(log_plan: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, M) log-plan -> (N,) int64 column drawn from each row's conditional distribution."""
    lp = log_plan.contiguous()
    N, M = lp.shape
    out = torch.empty(N, device=lp.device, dtype=torch.int64)
    bn, bm, nw = _ROW_BLOCK
    _gumbel_argmax[(triton.cdiv(N, bn),)](lp, out, N, M, seed, BLOCK_N=bn, BLOCK_M=bm,
                                          num_warps=nw)
    return out
