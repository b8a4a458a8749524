"""Flash attention (forward and backward) in Triton for (B, H, T, D) tensors, non-causal.

Forward (FlashAttention-2): each program owns BLOCK_M query rows of one (batch, head) and streams
the keys/values in BLOCK_N tiles with an online softmax (running max m_i and sum l_i, base 2), so
the T x T score matrix never exists in memory. It stores O and the row logsumexp
lse_i = log sum_j exp(scale q_i . k_j) (natural log, fp32, (B*H, T)) for the backward.

Backward: delta_i = sum_d O_id dO_id (a small pre-pass), then two kernels without atomics:
    dK, dV: one program per BLOCK_N keys, looping over all queries:
        P^T = exp(scale K Q^T - lse), dV += P^T dO, dS^T = P^T * (V dO^T - delta), dK += dS^T Q
    dQ: one program per BLOCK_M queries, looping over all keys: dQ += dS K.
(dK and dQ are scaled by ``scale`` at the end.)

Any T (tails masked), any D <= 128 (padded to BLOCK_D = next power of two >= 16, masked), any
strides (q/k/v may be strided views into one packed qkv tensor), fp32/fp16/bf16 with fp32
accumulation. fp32 inputs use IEEE dot products unless torch allows TF32 for matmuls.

Launched only through ``medshift_fast.ops.attention``. Under TRITON_INTERPRET=1 (CPU tests) one
small autotune config is used (more than one needs a GPU driver).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from medshift_fast.kernels._interpreter import patch_interpreter

from medshift_fast import _backend

__all__ = ["attention_fwd", "attention_bwd", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634
_INTERPRET = _backend.triton_interpret()


if _INTERPRET:
    patch_interpreter()


def _configs(pairs):
    """Autotune configs from (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples."""
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in pairs
    ]


if _INTERPRET:
    # Tiny blocks: tails and multi-block loops are exercised at T = 17 / 64 with small grids.
    _FWD = _configs([(32, 32, 4, 1)])
    _BWD_KV = _configs([(32, 32, 4, 1)])  # BLOCK_N keys per program, BLOCK_M queries per step
    _BWD_Q = _configs([(32, 32, 4, 1)])
else:  # pragma: no cover - GPU only
    _FWD = _configs([
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
        (64, 32, 4, 4), (128, 128, 8, 2),
    ])
    _BWD_KV = _configs([(32, 128, 4, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3)])
    _BWD_Q = _configs([(128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3)])


# MEDSHIFT_FAST_TRITON_AUTOTUNE=0: one config per kernel and no tuning runs (quick GPU checks).
_TUNE = os.environ.get("MEDSHIFT_FAST_TRITON_AUTOTUNE", "1") != "0"


def _prune(configs, named_args, **kwargs):
    """Drop configs whose tiles are much larger than T (they only add masked work); fp32 keeps
    only the smallest tile (IEEE fp32 dots run on FMA units, and big tiles take minutes to
    compile for no gain)."""
    smallest = min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
    if named_args["Q"].dtype == torch.float32:
        return [smallest]
    t = max(16, triton.next_power_of_2(int(named_args["T"])))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= t and c.kwargs["BLOCK_N"] <= t]
    kept = kept or [smallest]
    return kept if _TUNE else kept[:1]


_HEUR = {
    "EVEN_M": lambda a: a["T"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["T"] % a["BLOCK_N"] == 0,
    "EVEN_D": lambda a: a["D"] == a["BLOCK_D"],
}
_PRUNE = None if _INTERPRET else {"early_config_prune": _prune}


@triton.jit
def _load_tile(ptrs, offs_r, offs_c, n_r, n_c, EVEN_R: tl.constexpr, EVEN_C: tl.constexpr):
    """Load a 2-D tile; rows offs_r < n_r and columns offs_c < n_c, zeros elsewhere."""
    if EVEN_R and EVEN_C:
        x = tl.load(ptrs)
    elif EVEN_R:
        x = tl.load(ptrs, mask=offs_c[None, :] < n_c, other=0.0)
    elif EVEN_C:
        x = tl.load(ptrs, mask=offs_r[:, None] < n_r, other=0.0)
    else:
        x = tl.load(ptrs, mask=(offs_r[:, None] < n_r) & (offs_c[None, :] < n_c), other=0.0)
    return x


@triton.autotune(configs=_FWD, key=["T", "BLOCK_D"], prune_configs_by=_PRUNE)
@triton.heuristics(_HEUR)
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    H, T, D, qk_scale,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh

    q = _load_tile(q_base + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
                   offs_m, offs_d, T, D, EVEN_M, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, T, BLOCK_N):
        cols = start_n + offs_n
        # K^T tile (BLOCK_D, BLOCK_N): rows are head channels, columns are keys.
        kt = _load_tile(k_base + offs_d[:, None] * skd + cols[None, :] * skt,
                        offs_d, cols, D, T, EVEN_D, EVEN_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 units
        if not EVEN_N:
            s = tl.where(cols[None, :] < T, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                       cols, offs_d, T, D, EVEN_N, EVEN_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = (O + b.to(tl.int64) * sob + h.to(tl.int64) * soh
              + offs_m[:, None] * sot + offs_d[None, :] * sod)
    o_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=o_mask)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # natural log
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA, sob, soh, sot, sod, sgb, sgh, sgt, sgd, H, T, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * sot
                + offs_d[None, :] * sod, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_m[:, None] * sgt
                 + offs_d[None, :] * sgd, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.autotune(configs=_BWD_KV, key=["T", "BLOCK_D"], prune_configs_by=_PRUNE)
@triton.heuristics(_HEUR)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgd,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
    H, T, D, scale, qk_scale,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_base = Q + b64 * sqb + h64 * sqh
    g_base = DO + b64 * sgb + h64 * sgh
    row_base = bh.to(tl.int64) * T

    k = _load_tile(K + b64 * skb + h64 * skh + offs_n[:, None] * skt + offs_d[None, :] * skd,
                   offs_n, offs_d, T, D, EVEN_N, EVEN_D)
    v = _load_tile(V + b64 * svb + h64 * svh + offs_n[:, None] * svt + offs_d[None, :] * svd,
                   offs_n, offs_d, T, D, EVEN_N, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, T, BLOCK_M):
        rows = start_m + offs_m
        # Q^T and dO^T tiles (BLOCK_D, BLOCK_M).
        qt = _load_tile(q_base + offs_d[:, None] * sqd + rows[None, :] * sqt,
                        offs_d, rows, D, T, EVEN_D, EVEN_M)
        dot_t = _load_tile(g_base + offs_d[:, None] * sgd + rows[None, :] * sgt,
                           offs_d, rows, D, T, EVEN_D, EVEN_M)
        if EVEN_M:
            lse2 = tl.load(LSE + row_base + rows) * 1.4426950408889634
            delta = tl.load(DELTA + row_base + rows)
        else:
            lse2 = tl.load(LSE + row_base + rows, mask=rows < T, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + row_base + rows, mask=rows < T, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        pt = tl.exp2(st - lse2[None, :])
        if not EVEN_M:
            pt = tl.where(rows[None, :] < T, pt, 0.0)
        dv += tl.dot(pt.to(dot_t.dtype), tl.trans(dot_t), input_precision=PRECISION)
        dpt = tl.dot(v, dot_t, input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    dk = dk * scale
    mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
    tl.store(DK + b64 * sdkb + h64 * sdkh + offs_n[:, None] * sdkt + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + b64 * sdvb + h64 * sdvh + offs_n[:, None] * sdvt + offs_d[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.autotune(configs=_BWD_Q, key=["T", "BLOCK_D"], prune_configs_by=_PRUNE)
@triton.heuristics(_HEUR)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgd,
    sdqb, sdqh, sdqt, sdqd,
    H, T, D, scale, qk_scale,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    row_base = bh.to(tl.int64) * T

    q = _load_tile(Q + b64 * sqb + h64 * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
                   offs_m, offs_d, T, D, EVEN_M, EVEN_D)
    do = _load_tile(DO + b64 * sgb + h64 * sgh + offs_m[:, None] * sgt + offs_d[None, :] * sgd,
                    offs_m, offs_d, T, D, EVEN_M, EVEN_D)
    if EVEN_M:
        lse2 = tl.load(LSE + row_base + offs_m) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m)
    else:
        lse2 = tl.load(LSE + row_base + offs_m, mask=offs_m < T, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, T, BLOCK_N):
        cols = start_n + offs_n
        kt = _load_tile(k_base + offs_d[:, None] * skd + cols[None, :] * skt,
                        offs_d, cols, D, T, EVEN_D, EVEN_N)
        vt = _load_tile(v_base + offs_d[:, None] * svd + cols[None, :] * svt,
                        offs_d, cols, D, T, EVEN_D, EVEN_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - lse2[:, None])
        if not EVEN_N:
            p = tl.where(cols[None, :] < T, p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + b64 * sdqb + h64 * sdqh + offs_m[:, None] * sdqt + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_d[None, :] < D))


# ------------------------------------------------------------------------------------ launchers
def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for fp16/bf16 operands


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """A dense (B, H, T, D) tensor like ``x``; token-contiguous ((B, H, D, T) memory) when x is.

    Keeps gradients and outputs in the memory order of strided views into packed (B, 3C, T)
    activations, so the surrounding 1x1 convolutions read them without a transposing copy.
    """
    if x.stride(-2) == 1 and x.stride(-1) != 1:
        return torch.empty(
            (x.shape[0], x.shape[1], x.shape[3], x.shape[2]), device=x.device, dtype=x.dtype
        ).transpose(-1, -2)
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q, k, v: (B, H, T, D) tensors of one float dtype on one device, any strides, D <= 128.
        scale: softmax scale.
        out: optional (B, H, T, D) output tensor (any strides) to write O into.

    Returns:
        (O (B, H, T, D) in q's dtype, lse (B, H, T) fp32 natural-log row logsumexp).
    """
    B, H, T, D = q.shape
    o = empty_like_layout(q) if out is None else out
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    if T == 0 or B * H == 0:
        return o, lse

    def grid(meta):
        return (triton.cdiv(T, meta["BLOCK_M"]), B * H)

    _fwd_kernel[grid](
        q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H, T, D, float(scale) * _LOG2E,
        BLOCK_D=_block_d(D), PRECISION=_precision(q.dtype),
    )
    return o, lse


def attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels; returns (dq, dk, dv) shaped and laid out like q, k, v."""
    B, H, T, D = q.shape
    dq, dk, dv = empty_like_layout(q), empty_like_layout(k), empty_like_layout(v)
    if T == 0 or B * H == 0:
        return dq, dk, dv
    block_d = _block_d(D)
    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    bm = 32 if _INTERPRET else max(16, min(128, 8192 // block_d))
    _bwd_delta_kernel[(triton.cdiv(T, bm), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, T, D, BLOCK_M=bm, BLOCK_D=block_d,
    )
    prec = _precision(q.dtype)
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    _bwd_dkdv_kernel[lambda m: (triton.cdiv(T, m["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, *strides, *dk.stride(), *dv.stride(),
        H, T, D, float(scale), float(scale) * _LOG2E, BLOCK_D=block_d, PRECISION=prec,
    )
    _bwd_dq_kernel[lambda m: (triton.cdiv(T, m["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq, *strides, *dq.stride(),
        H, T, D, float(scale), float(scale) * _LOG2E, BLOCK_D=block_d, PRECISION=prec,
    )
    return dq, dk, dv


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
