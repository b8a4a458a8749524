"""Batched 1x1-convolution GEMM with a GroupNorm prologue and a bias + residual epilogue (Triton).

    Y[b] = A @ (X[b] * sa[b][:, None] + sb[b][:, None]) + bias[:, None] + R[b]

with A (M, K) shared over the batch (a 1x1 convolution's weight), X (B, K, N) channels x tokens,
per-sample per-channel affine (sa, sb) (B, K) applied in fp32 to the X tile in registers (the
GroupNorm normalisation: sa = gamma * rstd, sb = beta - mean * sa, so the normalised activation
never exists in memory), and an optional residual R (B, M, N) added in fp32 before the store.
The dot runs in A's dtype (fp32 accumulation). Used by ``medshift_fast.ops.attention_block``
for the qkv projection (prologue) and the output projection (bias + residual epilogue).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from medshift_fast import _backend

from .attention import _precision  # also applies the interpreter fixes when interpreting

__all__ = ["conv1x1", "group_stats"]

_INTERPRET = _backend.triton_interpret()


def _configs(rows):
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in rows
    ]


if _INTERPRET:
    _CONFIGS = _configs([(64, 32, 32, 4, 1)])
else:  # pragma: no cover - GPU only
    _CONFIGS = _configs([
        (128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
        (128, 128, 64, 8, 3), (64, 64, 64, 4, 3),
    ])


if os.environ.get("MEDSHIFT_FAST_TRITON_AUTOTUNE", "1") == "0":
    _CONFIGS = _CONFIGS[:1]  # one config, no tuning runs (quick GPU correctness checks)


@triton.autotune(configs=_CONFIGS, key=["M", "N", "K"])
@triton.jit
def _conv1x1_kernel(
    A, X, SA, SB, BIAS, R, Y,
    M, N, K,
    sam, sak, sxb, sxk, sxn, ssb, srb, srm, srn, syb, sym, syn,
    PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        a = tl.load(A + offs_m[:, None] * sam + ks[None, :] * sak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        x = tl.load(X + b * sxb + ks[:, None] * sxk + offs_n[None, :] * sxn,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if PROLOGUE:
            sa = tl.load(SA + b * ssb + ks, mask=mask_k, other=0.0)
            sb = tl.load(SB + b * ssb + ks, mask=mask_k, other=0.0)
            x = x.to(tl.float32) * sa[:, None] + sb[:, None]
        acc += tl.dot(a, x.to(a.dtype), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    mask = mask_m[:, None] & mask_n[None, :]
    if RESIDUAL:
        acc += tl.load(R + b * srb + offs_m[:, None] * srm + offs_n[None, :] * srn,
                       mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + b * syb + offs_m[:, None] * sym + offs_n[None, :] * syn,
             acc.to(Y.dtype.element_ty), mask=mask)


def conv1x1(
    weight: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Y[b] = weight @ (x[b] * scale[b] + shift[b]) + bias + residual[b].

    Args:
        weight: (M, K) in the compute dtype (fp32/fp16/bf16).
        x: (B, K, N) any float dtype, any strides.
        scale, shift: (B, K) fp32 per-sample per-channel affine (both or neither).
        bias: (M,) or None.
        residual: (B, M, N) or None (any strides).
        out_dtype: Y's dtype; weight's dtype when None.

    Returns:
        (B, M, N) contiguous tensor.
    """
    M, K = weight.shape
    B, K2, N = x.shape
    if K2 != K:
        raise ValueError(f"conv1x1: weight is ({M}, {K}) but x has {K2} channels")
    y = torch.empty((B, M, N), device=x.device, dtype=out_dtype or weight.dtype)
    if y.numel() == 0:
        return y
    prologue = scale is not None
    if prologue:
        scale = scale.to(torch.float32).contiguous()
        shift = shift.to(torch.float32).contiguous()
    dummy = y  # never read when the matching flag is off
    r = residual if residual is not None else dummy

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]), B)

    _conv1x1_kernel[grid](
        weight, x, scale if prologue else dummy, shift if prologue else dummy,
        bias if bias is not None else dummy, r, y,
        M, N, K, *weight.stride(), *x.stride(), K if prologue else 0,
        *(r.stride() if residual is not None else (0, 0, 0)), *y.stride(),
        PROLOGUE=prologue, HAS_BIAS=bias is not None, RESIDUAL=residual is not None,
        PRECISION=_precision(weight.dtype),
    )
    return y


@triton.jit
def _group_stats_kernel(X, MEAN, RSTD, G, CG, N, sxb, sxc, sxn, inv_count, eps,
                        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Mean and 1/sqrt(var + eps) of one (sample, group): CG channels x N tokens, two passes."""
    pid = tl.program_id(0)
    b = (pid // G).to(tl.int64)
    g = pid % G
    offs_c = tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_N)
    base = X + b * sxb + (g * CG).to(tl.int64) * sxc
    acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, CG, BLOCK_C):
        for n0 in range(0, N, BLOCK_N):
            cs = c0 + offs_c
            ns = n0 + offs_n
            m = (cs[:, None] < CG) & (ns[None, :] < N)
            acc += tl.load(base + cs[:, None] * sxc + ns[None, :] * sxn, mask=m,
                           other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(acc, 1), 0) * inv_count
    acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, CG, BLOCK_C):
        for n0 in range(0, N, BLOCK_N):
            cs = c0 + offs_c
            ns = n0 + offs_n
            m = (cs[:, None] < CG) & (ns[None, :] < N)
            xv = tl.load(base + cs[:, None] * sxc + ns[None, :] * sxn, mask=m,
                         other=0.0).to(tl.float32)
            d = tl.where(m, xv - mean, 0.0)
            acc += d * d
    var = tl.sum(tl.sum(acc, 1), 0) * inv_count
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, 1.0 / tl.sqrt(var + eps))


def group_stats(x: torch.Tensor, num_groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm statistics of x (B, C, N) (any strides): (mean, rstd), each (B, G) fp32.

    Two passes in fp32 (mean, then the mean squared deviation): no cancellation, x read twice
    and never copied or widened in memory.
    """
    B, C, N = x.shape
    G = num_groups
    mean = torch.empty((B, G), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if B * G == 0:
        return mean, rstd
    cg = C // G
    block_c = min(triton.next_power_of_2(cg), 16 if _INTERPRET else 8)
    block_n = min(triton.next_power_of_2(N), 32 if _INTERPRET else 512)
    _group_stats_kernel[(B * G,)](
        x, mean, rstd, G, cg, N, *x.stride(), 1.0 / (cg * N), float(eps),
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=4,
    )
    return mean, rstd
