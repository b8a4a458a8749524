"""Multi-head attention softmax(q k^T / sqrt(D)) v for (B, H, T, D), dispatched.

The reference is torch's SDPA (which itself picks flash/efficient/math kernels). A Triton
flash-attention kernel (forward and backward) plugs in here; on the CPU the reference runs.
"""

from __future__ import annotations

import torch

from .. import _backend
from .reference import attention_ref

__all__ = ["attention"]

_SUPPORTED = ("reference",)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over T tokens.

    Args:
        q, k, v: (B, H, T, D) tensors (same dtype and device).
        scale: softmax scale; D**-0.5 when None.
        backend: reference | triton | auto (None: the context's backend).

    Returns:
        (B, H, T, D) tensor.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention: q, k, v must all be (B, H, T, D) of one shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    name = _backend.resolve("attention", q.device.type, _SUPPORTED, backend)
    if name == "reference":
        return attention_ref(q, k, v, scale)
    raise _backend.BackendUnavailableError(f"attention: no {name} implementation")  # pragma: no cover
