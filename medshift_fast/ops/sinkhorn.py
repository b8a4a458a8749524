"""Log-domain entropic OT (Sinkhorn) behind one dispatching function.

Order (STYLE.md): reference (ops/reference.py) -> Triton launcher -> _C entry -> public function.
No autograd: the coupling is computed under no_grad.
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..errors import MedShiftError
from .reference import SinkhornResult, sinkhorn_ref

__all__ = ["sinkhorn", "SinkhornResult"]

_SUPPORTED = ("reference",)  # kernels append themselves here when they land: cpp, triton, cuda


def _impl(name: str):
    if name == "reference":
        return sinkhorn_ref
    raise _backend.BackendUnavailableError(f"sinkhorn: no {name} implementation")


def sinkhorn(
    cost: torch.Tensor,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    backend: str | None = None,
    f_init: torch.Tensor | None = None,
    g_init: torch.Tensor | None = None,
    eps_scaling: float | None = None,
) -> SinkhornResult:
    """Entropic OT plan between marginals a and b for cost C, in the log domain.

    Args:
        cost: (N, M) or (K, N, M) cost matrix (fp32/fp16/bf16; accumulation in fp32).
        eps: absolute entropic regularisation > 0 (use ``eps * cost.mean()`` for a relative one).
        a, b: marginals (N,)/(K, N) and (M,)/(K, M); uniform when None.
        max_iter, tol: iteration cap and L1 row-marginal tolerance (tol <= 0: exactly max_iter).
        backend: reference | cpp | triton | cuda | auto (None: the context's backend).
        f_init, g_init: warm-start potentials from a previous solve.
        eps_scaling: if set (> 1), solve a sequence eps_s = eps * eps_scaling**s from a large
            eps (about the max cost) down to eps, warm-starting each stage (faster and more
            robust for eps far below the cost scale).

    Returns:
        SinkhornResult(log_plan, f, g, n_iter, marginal_error).
    """
    if not isinstance(cost, torch.Tensor) or cost.dim() not in (2, 3):
        raise MedShiftError(
            f"sinkhorn: cost must be a (N, M) or (K, N, M) tensor, got "
            f"{tuple(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__}"
        )
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise MedShiftError(f"sinkhorn: eps must be a finite number > 0, got {eps!r}")
    if cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise MedShiftError(f"sinkhorn: empty cost matrix {tuple(cost.shape)}")
    if not torch.isfinite(cost).all():
        raise MedShiftError("sinkhorn: cost contains NaN or Inf; check the inputs of the coupling")
    name = _backend.resolve("sinkhorn", cost.device.type, _SUPPORTED, backend)
    fn = _impl(name)
    with torch.no_grad():
        if eps_scaling is not None and eps_scaling > 1.0:
            cmax = float(cost.detach().float().amax())
            e = max(eps, cmax)
            n_stages = max(0, int(math.ceil(math.log(e / eps) / math.log(eps_scaling))))
            g = g_init
            f = f_init
            total = 0
            for s in range(n_stages, 0, -1):
                e_s = eps * eps_scaling**s
                r = fn(cost, e_s, a, b, max_iter=max(10, max_iter // (n_stages + 1)),
                       tol=max(tol, 1e-3), f_init=f, g_init=g)
                f, g, total = r.f, r.g, total + r.n_iter
            r = fn(cost, eps, a, b, max_iter=max_iter, tol=tol, f_init=f, g_init=g)
            r.n_iter += total
            return r
        return fn(cost, eps, a, b, max_iter=max_iter, tol=tol, f_init=f_init, g_init=g_init)
