"""Fused classifier-free-guidance combine + solver-stage update, dispatched.

    k = v_uncond + w (v_cond - v_uncond);  x_new = x + h k;  acc_new = (acc or x) + c k

One read of each input and one write of each output in the kernels; the reference is plain
torch (reference.guided_stage_ref). ``out``/``acc_out`` allow in-place use on preallocated
buffers (``out=x`` and ``acc_out=acc`` are safe: the update is elementwise).
"""

from __future__ import annotations

import torch

from .. import _backend
from .reference import guided_stage_ref, guided_velocity_ref

__all__ = ["guided_stage", "guided_velocity"]

_SUPPORTED = ("reference",)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor | None, w: float) -> torch.Tensor:
    """v = v_uncond + w (v_cond - v_uncond) (v_cond when v_uncond is None)."""
    return guided_velocity_ref(v_cond, v_uncond, w)


def guided_stage(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    w: float,
    h: float,
    acc: torch.Tensor | None = None,
    c: float = 0.0,
    out: torch.Tensor | None = None,
    acc_out: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guided stage update; see module docstring. Returns (x_new, acc_new or None)."""
    if v_cond.shape != x.shape or (v_uncond is not None and v_uncond.shape != x.shape):
        raise ValueError(
            f"guided_stage: shapes differ: x {tuple(x.shape)}, v_cond {tuple(v_cond.shape)}, "
            f"v_uncond {None if v_uncond is None else tuple(v_uncond.shape)}"
        )
    name = _backend.resolve("guided_stage", x.device.type, _SUPPORTED, backend)
    if name != "reference":  # pragma: no cover - kernels plug in here
        raise _backend.BackendUnavailableError(f"guided_stage: no {name} implementation")
    x_new, acc_new = guided_stage_ref(x, v_cond, v_uncond, w, h, acc, c)
    if out is not None:
        out.copy_(x_new)
        x_new = out
    if acc_new is not None and acc_out is not None:
        acc_out.copy_(acc_new)
        acc_new = acc_out
    return x_new, acc_new
