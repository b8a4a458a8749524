"""Log-domain entropic OT (Sinkhorn) behind one dispatching function.

Order (STYLE.md): reference (ops/reference.py) -> Triton launcher -> _C entry -> public function.
No autograd: the coupling is computed under no_grad.

Backends (all with the reference's semantics: one iteration = f update then g update; tol <= 0
runs exactly max_iter iterations; tol > 0 stops at the first check, every ``check_every``
iterations or at max_iter, where every problem of the batch is within tol):
    reference: ``sinkhorn_ref``, torch logsumexp loop.
    cpp: ``torch.ops.medshift_fast.sinkhorn_log`` on CPU tensors (csrc/cpu/sinkhorn.cpp): most
        iterations are mat-vec scalings of a stabilised kernel, the rest SIMD log-domain passes.
    cuda: the same op on CUDA tensors (csrc/cuda/sinkhorn.cu): all iterations of a problem in one
        launch, convergence checked on the device.
    triton: ``medshift_fast.kernels.sinkhorn``: one program per problem, all iterations in one
        launch. CPU tensors only under TRITON_INTERPRET=1 (a test mode).
"""

from __future__ import annotations

import functools
import math

import torch

from .. import _backend
from ..errors import MedShiftError
from .reference import SinkhornResult, _log_marginals, sinkhorn_ref

__all__ = ["sinkhorn", "SinkhornResult"]

_SUPPORTED = ("reference", "cpp", "triton", "cuda")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP = "medshift_fast::sinkhorn_log"


def _prepare(cost, a, b, f_init, g_init):
    """Batched fp32 inputs of the kernels: C (K, N, M), log a, log b, f0 (K, N), g0 (K, M)."""
    C = cost if cost.dim() == 3 else cost.unsqueeze(0)
    la, lb = _log_marginals(C, a, b)  # the reference's own marginals (same rounding)
    f0 = torch.zeros_like(la) if f_init is None else f_init.to(la).expand_as(la)
    g0 = torch.zeros_like(lb) if g_init is None else g_init.to(lb).expand_as(lb)
    return C, la.contiguous(), lb.contiguous(), f0.contiguous(), g0.contiguous()


def _result(cost, log_plan, f, g, n_iter, err) -> SinkhornResult:
    if cost.dim() == 2:
        log_plan, f, g, err = log_plan[0], f[0], g[0], err[0]
    return SinkhornResult(log_plan, f, g, int(n_iter), err)


# ---------------------------------------------------------------------------- Triton launcher
def _sinkhorn_triton(cost, eps, a=None, b=None, max_iter=1000, tol=1e-6, f_init=None,
                     g_init=None, check_every=10) -> SinkhornResult:
    kern = _backend.import_kernels("sinkhorn")
    C, la, lb, f0, g0 = _prepare(cost, a, b, f_init, g_init)
    lp, f, g, err, n_iter = kern.sinkhorn_log(C, la, lb, f0, g0, float(eps), int(max_iter),
                                              float(tol), int(check_every))
    return _result(cost, lp, f, g, n_iter, err)


# ----------------------------------------------------------------------------------- _C entry
@functools.cache
def _c_op():
    """torch.ops.medshift_fast.sinkhorn_log, or None when the extension lacks it."""
    if _backend.extension() is None:
        return None
    op = getattr(getattr(torch.ops, "medshift_fast", None), "sinkhorn_log", None)
    if op is None:
        return None
    try:  # fake (meta) impl so that torch.compile / export can trace through the op

        @torch.library.register_fake(_OP)
        def _fake(cost, log_a, log_b, f_init, g_init, eps, max_iter, tol, check_every, path=0):
            K, N, M = cost.shape
            new = functools.partial(cost.new_empty, dtype=torch.float32)
            return (new((K, N, M)), new((K, N)), new((K, M)), new((K,)),
                    torch.empty(3, dtype=torch.int64))
    except RuntimeError:  # already registered (e.g. module reloaded)
        pass
    return op


@functools.cache
def _c_has(device_type: str) -> bool:
    if _c_op() is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(_OP, key))


def _sinkhorn_c(cost, eps, a=None, b=None, max_iter=1000, tol=1e-6, f_init=None, g_init=None,
                check_every=10) -> SinkhornResult:
    op = _c_op()
    C, la, lb, f0, g0 = _prepare(cost, a, b, f_init, g_init)
    lp, f, g, err, stats = op(C.contiguous(), la, lb, f0, g0, float(eps), int(max_iter),
                              float(tol), int(check_every))
    return _result(cost, lp, f, g, stats[0], err)


def _impl(name: str):
    if name == "reference":
        return sinkhorn_ref
    if name in ("cpp", "cuda"):
        return _sinkhorn_c
    if name == "triton":
        return _sinkhorn_triton
    raise _backend.BackendUnavailableError(f"sinkhorn: no {name} implementation")


def _supported(cost: torch.Tensor) -> tuple[str, ...]:
    """Backends that implement these inputs (the extension may predate the op)."""
    out = ["reference"]
    if cost.dtype in _DTYPES:
        dev = cost.device.type
        if dev == "cpu" and _c_has("cpu"):
            out.append("cpp")
        if dev == "cuda" and _c_has("cuda"):
            out.append("cuda")
        if dev in ("cuda", "cpu"):
            out.append("triton")
    return tuple(b for b in _SUPPORTED if b in out)


def _check_vector(name: str, t: torch.Tensor | None, batch: tuple[int, ...], n: int) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.shape not in ((n,), (*batch, n)):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        want = f"({n},)" + (f" or {(*batch, n)}" if batch else "")
        raise MedShiftError(f"sinkhorn: {name} must have shape {want}, got {shape}")


# -------------------------------------------------------------------------------- public function
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
    *,
    check_every: int = 10,
) -> SinkhornResult:
    """Entropic OT plan between marginals a and b for cost C, in the log domain.

    Solves min_P <C, P> + eps KL(P | a b^T) s.t. P 1 = a, P^T 1 = b, with
    log P_ij = (f_i + g_j - C_ij) / eps.

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
        check_every: iterations between convergence checks (tol > 0).

    Returns:
        SinkhornResult(log_plan, f, g, n_iter, marginal_error), fp32.
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
    if int(check_every) < 1:
        raise MedShiftError(f"sinkhorn: check_every must be >= 1, got {check_every!r}")
    *batch, n, m = cost.shape
    batch = tuple(batch)
    _check_vector("a", a, batch, n)
    _check_vector("b", b, batch, m)
    _check_vector("f_init", f_init, batch, n)
    _check_vector("g_init", g_init, batch, m)
    name = _backend.resolve("sinkhorn", cost.device.type, _supported(cost), backend)
    impl = _impl(name)

    def fn(c, e, a_, b_, max_iter, tol, f_init, g_init):
        return impl(c, e, a_, b_, max_iter=max_iter, tol=tol, f_init=f_init, g_init=g_init,
                    check_every=int(check_every))

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
