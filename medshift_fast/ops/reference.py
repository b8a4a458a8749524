"""Pure-PyTorch references of every op: the spec every kernel is tested against, the CPU
fallback and the export path (only standard ops appear in them).

Conventions (DESIGN.md): x_0 is noise, x_1 is data; C_ij = ||x_0,i - x_1,j||^2; the entropic OT
plan is P_ij = exp((f_i + g_j - C_ij) / eps) with dual potentials f (rows) and g (columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "SinkhornResult",
    "sinkhorn_ref",
    "pairwise_sqdist_ref",
    "sample_plan_ref",
    "attention_ref",
    "guided_velocity_ref",
    "guided_stage_ref",
]


# ------------------------------------------------------------------------------------ sinkhorn
@dataclass
class SinkhornResult:
    """Result of a log-domain Sinkhorn solve.

    Attributes:
        log_plan: (…, N, M) log of the transport plan, log P = (f[:, None] + g[None] - C) / eps.
        f: (…, N) row potentials.
        g: (…, M) column potentials.
        n_iter: iterations run (one iteration = one f update + one g update); the maximum over
            the batch.
        marginal_error: (…) L1 error of the row marginal, sum_i |P 1 - a|_i, after the last
            g update (the column marginal is then exact up to rounding).
    """

    log_plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    marginal_error: torch.Tensor

    @property
    def plan(self) -> torch.Tensor:
        return self.log_plan.exp()


def _log_marginals(
    cost: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    *batch, n, m = cost.shape
    dev = cost.device
    if a is None:
        log_a = torch.full((*batch, n), -math.log(n), device=dev, dtype=torch.float32)
    else:
        log_a = torch.log(a.to(device=dev, dtype=torch.float32)).expand(*batch, n)
    if b is None:
        log_b = torch.full((*batch, m), -math.log(m), device=dev, dtype=torch.float32)
    else:
        log_b = torch.log(b.to(device=dev, dtype=torch.float32)).expand(*batch, m)
    return log_a, log_b


def sinkhorn_ref(
    cost: torch.Tensor,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    f_init: torch.Tensor | None = None,
    g_init: torch.Tensor | None = None,
    check_every: int = 10,
) -> SinkhornResult:
    """Entropic OT by log-domain Sinkhorn (stable for any eps > 0).

    Solves min_P <C, P> + eps KL(P | a b^T) s.t. P 1 = a, P^T 1 = b by alternating
    f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps) and
    g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps).

    Args:
        cost: (N, M) or (K, N, M) cost, any float dtype (accumulation in fp32).
        eps: entropic regularisation (absolute, > 0).
        a: (N,) or (K, N) row marginal (positive, sums to 1); uniform when None.
        b: (M,) or (K, M) column marginal; uniform when None.
        max_iter: maximum number of iterations.
        tol: stop when the row-marginal L1 error of every problem is <= tol (checked every
            ``check_every`` iterations); tol <= 0 runs exactly ``max_iter`` iterations.
        f_init, g_init: warm start potentials (only g_init is needed: the first update is f).

    Returns:
        SinkhornResult with fp32 tensors.
    """
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"sinkhorn: eps must be a finite positive number, got {eps}")
    if cost.dim() not in (2, 3):
        raise ValueError(
            f"sinkhorn: cost must be (N, M) or (K, N, M), got shape {tuple(cost.shape)}"
        )
    C = cost.to(torch.float32)
    log_a, log_b = _log_marginals(C, a, b)
    Ce = C / eps
    g = (
        g_init.to(torch.float32).expand_as(log_b).clone()
        if g_init is not None
        else torch.zeros_like(log_b)
    )
    f = (
        f_init.to(torch.float32).expand_as(log_a).clone()
        if f_init is not None
        else torch.zeros_like(log_a)
    )
    # exp() of very negative arguments produces denormals, ~100x slower on x86 CPUs; they do not
    # change a log-sum-exp in fp32, so flush them for the loop (torch has no getter for the
    # flag: it is restored to the default, off).
    flushed = C.device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        f, g, n_iter = _sinkhorn_loop(Ce, f, g, log_a, log_b, eps, max_iter, tol, check_every)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    log_plan = (f.unsqueeze(-1) + g.unsqueeze(-2)) / eps - Ce
    err = (log_plan.exp().sum(-1) - log_a.exp()).abs().sum(-1)
    return SinkhornResult(log_plan, f, g, n_iter, err)


def _sinkhorn_loop(Ce, f, g, log_a, log_b, eps, max_iter, tol, check_every):
    n_iter = 0
    for it in range(1, max_iter + 1):
        # f/eps and g/eps are kept scaled to avoid repeated divisions.
        f = eps * (log_a - torch.logsumexp(g.unsqueeze(-2) / eps - Ce, dim=-1))
        g = eps * (log_b - torch.logsumexp(f.unsqueeze(-1) / eps - Ce, dim=-2))
        n_iter = it
        if tol > 0 and (it % check_every == 0 or it == max_iter):
            err = _row_marginal_error(Ce, f, g, eps, log_a)
            if bool((err <= tol).all()):
                break
    return f, g, n_iter


def _row_marginal_error(Ce, f, g, eps, log_a):
    row = torch.logsumexp((f.unsqueeze(-1) + g.unsqueeze(-2)) / eps - Ce, dim=-1)
    return (row.exp() - log_a.exp()).abs().sum(-1)


# ---------------------------------------------------------------------------------------- cost
def pairwise_sqdist_ref(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """C_ij = ||x0_i - x1_j||^2 for flattened samples, by one GEMM with the norms added.

    Args:
        x0: (N, ...) samples; x1: (M, ...) samples (same trailing size).

    Returns:
        (N, M) fp32 cost, clamped at 0 (the GEMM form can round slightly negative).
    """
    a = x0.reshape(x0.shape[0], -1).to(torch.float32)
    b = x1.reshape(x1.shape[0], -1).to(torch.float32)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"pairwise_sqdist: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    c = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return c.clamp_min_(0.0)


# ---------------------------------------------------------------------------------- plan sampling
PLAN_SAMPLING_MODES = ("multinomial", "conditional", "assignment")


def sample_plan_ref(
    log_plan: torch.Tensor,
    mode: str = "multinomial",
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw index pairs (i, j) from a (N, M) plan.

    Modes:
        multinomial: ``n`` (default N) i.i.d. draws of (i, j) from the whole plan (torchcfm).
        conditional: for each row i, j ~ P[i, :] / sum_j P[i, j] (Gumbel-max); returns N pairs.
        assignment: the hard limit: an exact assignment maximising sum log P (a permutation
            when N == M, by the Hungarian method); row-wise argmax otherwise.

    Returns:
        (i, j) int64 index tensors on the plan's device.
    """
    if log_plan.dim() != 2:
        raise ValueError(f"sample_plan: expects a (N, M) plan, got {tuple(log_plan.shape)}")
    N, M = log_plan.shape
    dev = log_plan.device
    lp = log_plan.to(torch.float32)
    if mode == "multinomial":
        n = N if n is None else n
        flat = lp.reshape(-1)
        p = torch.softmax(flat, 0)
        if not torch.isfinite(p).all() or p.sum() <= 0:
            raise FloatingPointError("sample_plan: plan is not a valid distribution")
        idx = torch.multinomial(p.cpu(), n, replacement=True, generator=generator).to(dev)
        return idx // M, idx % M
    if mode == "conditional":
        u = torch.rand(lp.shape, generator=generator, dtype=torch.float32).to(dev)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        j = (lp + gumbel).argmax(1)
        return torch.arange(N, device=dev), j
    if mode == "assignment":
        if N == M:
            from scipy.optimize import linear_sum_assignment

            r, c = linear_sum_assignment(-lp.detach().cpu().double().numpy())
            return (torch.as_tensor(r, device=dev, dtype=torch.long),
                    torch.as_tensor(c, device=dev, dtype=torch.long))
        return torch.arange(N, device=dev), lp.argmax(1)
    raise ValueError(f"sample_plan: unknown mode {mode!r}; choose one of {PLAN_SAMPLING_MODES}")


# ------------------------------------------------------------------------------------ attention
def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, T, D) tensors; scale defaults to D^-1/2 (SDPA).

    CUDA SDPA kernels reject some strided views (e.g. token-major heads with T = 1: "query is not
    correctly aligned"), so CUDA inputs are made contiguous first (a no-op when they are).
    """
    if q.is_cuda:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# ---------------------------------------------------------------------------- guided ODE stages
def guided_velocity_ref(
    v_cond: torch.Tensor, v_uncond: torch.Tensor | None, w: float
) -> torch.Tensor:
    """Classifier-free guidance: v = v_uncond + w (v_cond - v_uncond); v_cond when unguided."""
    if v_uncond is None:
        return v_cond
    return v_uncond + w * (v_cond - v_uncond)


def guided_stage_ref(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    w: float,
    h: float,
    acc: torch.Tensor | None = None,
    c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fused solver stage with classifier-free guidance.

    With k = v_uncond + w (v_cond - v_uncond):
        x_new   = x + h k
        acc_new = (acc if given else x) + c k          (only when acc is given or c != 0)

    Every fixed-step solver is a sequence of these (see flow/solvers.py): euler is one stage
    with acc unused; heun's predictor is (h=dt, c=dt/2) then (x=acc, h=dt/2); rk4 accumulates
    dt/6, dt/3, dt/3 and finishes with h=dt/6 from the accumulator.

    Returns:
        (x_new, acc_new or None), in x's dtype; arithmetic in fp32 (fp64 for fp64 inputs).
    """
    ct = torch.promote_types(x.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
    k = guided_velocity_ref(v_cond.to(ct), None if v_uncond is None else v_uncond.to(ct), w)
    x_new = (x.to(ct) + h * k).to(x.dtype)
    acc_new = None
    if acc is not None or c != 0.0:
        base = acc if acc is not None else x
        acc_new = (base.to(ct) + c * k).to(base.dtype)
    return x_new, acc_new
