"""Fused classifier-free-guidance combine + ODE solver-stage update in Triton.

    k = v_uncond + w (v_cond - v_uncond)       (k = v_cond without v_uncond)
    x_out = x + h k;   acc_out = (acc or x) + c k      (acc_out only when asked for)

A flat elementwise kernel over n contiguous elements: each program owns BLOCK elements, loads
every input once, computes in fp32 and stores each output once in the tensors' dtype. Which of
v_uncond / acc / acc_out exist is a compile-time flag, so absent tensors cost nothing. Offsets
are int64, so any n works. In place is safe (each program loads its inputs before it stores).

Launched only through ``medshift_fast.ops.guided_stage`` with contiguous tensors of one dtype.
Under TRITON_INTERPRET=1 (CPU tests) the same single configuration runs in the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from medshift_fast.kernels._interpreter import patch_interpreter

from medshift_fast import _backend

if _backend.triton_interpret():
    patch_interpreter()

__all__ = ["guided_stage"]

_BLOCK = 2048  # 8 KiB of fp32 per input per program: enough bytes in flight on a GPU SM
_NUM_WARPS = 8


@triton.jit
def _guided_stage_kernel(
    x_ptr,
    vc_ptr,
    vu_ptr,
    acc_ptr,
    xo_ptr,
    ao_ptr,
    n,
    w,
    h,
    c,
    HAS_UNCOND: tl.constexpr,
    HAS_ACC: tl.constexpr,
    WRITE_ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    k = tl.load(vc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        vu = tl.load(vu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        k = vu + w * (k - vu)
    if WRITE_ACC:
        if HAS_ACC:
            base = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            base = x
        tl.store(ao_ptr + offs, (base + c * k).to(ao_ptr.dtype.element_ty), mask=mask)
    tl.store(xo_ptr + offs, (x + h * k).to(xo_ptr.dtype.element_ty), mask=mask)


def guided_stage(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    acc: torch.Tensor | None,
    w: float,
    h: float,
    c: float,
    x_out: torch.Tensor,
    acc_out: torch.Tensor | None,
) -> None:
    """Write x_out (and acc_out when given); all tensors contiguous, one dtype, same numel.

    Args:
        x, v_cond: (N,) state and conditional velocity (any shape, flattened).
        v_uncond: unconditional velocity or None (no guidance).
        acc: accumulator read for acc_out, or None (then acc_out starts from x).
        w, h, c: guidance scale, step coefficient, accumulator coefficient.
        x_out: output for x + h k (may be x itself).
        acc_out: output for (acc or x) + c k, or None to skip it (may be acc itself).
    """
    n = x.numel()
    if n == 0:
        return
    grid = (triton.cdiv(n, _BLOCK),)
    _guided_stage_kernel[grid](
        x,
        v_cond,
        v_uncond if v_uncond is not None else x,
        acc if acc is not None else x,
        x_out,
        acc_out if acc_out is not None else x_out,
        n,
        float(w),
        float(h),
        float(c),
        HAS_UNCOND=v_uncond is not None,
        HAS_ACC=acc is not None,
        WRITE_ACC=acc_out is not None,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
    )
