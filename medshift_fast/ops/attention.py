"""Multi-head attention softmax(q k^T * scale) v for (B, H, T, D), dispatched.

Backends:
    reference: torch's SDPA (which itself picks flash/efficient/math kernels); the CPU path and
        the export path.
    triton: a flash-attention forward and backward (``medshift_fast.kernels.attention``): online
        softmax, no T x T matrix in memory, D <= 128, any T, fp32/fp16/bf16, any strides. Picked by
        ``auto`` for CUDA tensors; on CPU tensors only when asked for explicitly under
        TRITON_INTERPRET=1 (a test mode).

While exporting (ONNX, torch.export) ``auto`` always resolves to the reference.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _backend
from .reference import attention_ref

__all__ = ["attention"]

_SUPPORTED = ("triton", "reference")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 128  # = kernels.attention.MAX_HEAD_DIM (not imported: no Triton at import time)


def _default_scale(d: int) -> float:
    return float(d) ** -0.5


# --------------------------------------------------------------------------- Triton launchers
def _device_ctx(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _triton_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns O (B, H, T, D) and the fp32 natural-log row logsumexp (B, H, T)."""
    kern = _backend.import_kernels("attention")
    with _device_ctx(q):
        return kern.attention_fwd(q, k, v, scale)


def _triton_bwd(do, q, k, v, o, lse, scale):
    kern = _backend.import_kernels("attention")
    with _device_ctx(q):
        return kern.attention_bwd(do, q, k, v, o, lse, scale)


# ------------------------------------------------------------------------------ autograd.Function
class _FlashAttention(torch.autograd.Function):
    """Triton flash attention; saves q, k, v, O and the logsumexp (no T x T tensor)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        o, lse = _triton_fwd(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _triton_bwd(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None


# -------------------------------------------------------------------------------- public function
def _exporting() -> bool:
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except AttributeError:  # pragma: no cover
        pass
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def supported_backends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[str, ...]:
    """Backends that implement attention for these inputs (before availability/device checks)."""
    if _exporting():
        return ("reference",)
    ok = (
        q.dtype in _TRITON_DTYPES
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and k.device == q.device
        and v.device == q.device
        and 1 <= q.shape[-1] <= _MAX_HEAD_DIM
    )
    return _SUPPORTED if ok else ("reference",)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over T tokens: O = softmax(q k^T * scale) v, per batch and head.

    Args:
        q, k, v: (B, H, T, D) tensors (same dtype and device; any strides).
        scale: softmax scale; D**-0.5 when None.
        backend: reference | triton | auto (None: the context's backend).

    Returns:
        (B, H, T, D) tensor in q's dtype. The Triton path returns it token-contiguous
        ((B, H, D, T) memory) when q is, else contiguous.

    Raises:
        ValueError: shapes differ or are not 4-D.
        BackendUnavailableError: an explicitly requested backend cannot run these inputs.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention: q, k, v must all be (B, H, T, D) of one shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    name = _backend.resolve("attention", q.device.type, supported_backends(q, k, v), backend)
    if name == "reference":
        return attention_ref(q, k, v, scale)
    scale = _default_scale(q.shape[-1]) if scale is None else float(scale)
    dev = q.device.type
    if q.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        # As SDPA does under autocast: run in the autocast dtype.
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    return _FlashAttention.apply(q, k, v, scale)
