"""Minibatch Schrödinger-bridge coupling between noise x_0 and data x_1 (labels travel with x_1).

C_ij = ||x_0,i - x_1,j||^2 (one GEMM) -> entropic OT with eps = 2 sigma^2 (or eps_relative x the
mean cost) solved by log-domain Sinkhorn -> pairs drawn from the plan. Unlike torchcfm (which
exponentiates -C/eps and, for image-sized costs, silently falls back to independent pairs when
the kernel underflows), this is correct for every sigma. sigma = 0 (eps = 0) is the exact OT
limit and is solved as an assignment problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..errors import MedShiftError

COUPLINGS = ("sinkhorn", "exact", "independent")


@dataclass(frozen=True)
class CouplingConfig:
    """How noise and data are paired in a minibatch.

    Attributes:
        method: sinkhorn (entropic OT = SB), exact (OT assignment, the sigma -> 0 limit),
            independent (plain CFM pairs).
        sigma: bridge noise; the entropic eps is 2 sigma^2 unless eps_relative is given.
        eps_relative: if set, eps = eps_relative * mean(C) instead of 2 sigma^2.
        sampling: multinomial | conditional | assignment (how pairs are drawn from the plan).
        max_iter, tol: Sinkhorn limits.
        eps_scaling: optional eps-scaling factor for Sinkhorn (see ops.sinkhorn).
    """

    method: str = "sinkhorn"
    sigma: float = 0.1
    eps_relative: float | None = None
    sampling: str = "conditional"
    max_iter: int = 200
    tol: float = 1e-4
    eps_scaling: float | None = None

    def __post_init__(self) -> None:
        if self.method not in COUPLINGS:
            raise MedShiftError(f"coupling method {self.method!r} unknown; choose {COUPLINGS}")
        if self.sampling not in ops.PLAN_SAMPLING_MODES:
            raise MedShiftError(
                f"plan sampling {self.sampling!r} unknown; choose {ops.PLAN_SAMPLING_MODES}"
            )
        if self.sigma < 0:
            raise MedShiftError(f"sigma must be >= 0, got {self.sigma}")
        if self.eps_relative is not None and self.eps_relative <= 0:
            raise MedShiftError(f"eps_relative must be > 0, got {self.eps_relative}")


def coupling_eps(cfg: CouplingConfig, cost: torch.Tensor) -> float:
    """The absolute entropic regularisation for this cost (0 means exact OT)."""
    if cfg.eps_relative is not None:
        return float(cfg.eps_relative * cost.float().mean().clamp_min(1e-12))
    return 2.0 * cfg.sigma**2


@torch.no_grad()
def couple_indices(
    x0: torch.Tensor,
    x1: torch.Tensor,
    cfg: CouplingConfig,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) pairing x0[i] with x1[j] for one minibatch.

    Args:
        x0: (N, ...) noise; x1: (M, ...) data.

    Returns:
        (i, j) int64 tensors of length N (multinomial/conditional) or min(N, M) (assignment).
    """
    n = x0.shape[0]
    if cfg.method == "independent":
        return torch.arange(n, device=x0.device), torch.arange(n, device=x0.device) % x1.shape[0]
    cost = ops.pairwise_sqdist(x0, x1, backend=backend)
    eps = coupling_eps(cfg, cost)
    if cfg.method == "exact" or eps == 0.0:
        return ops.sample_plan(-cost, "assignment", generator=generator)
    res = ops.sinkhorn(cost, eps, max_iter=cfg.max_iter, tol=cfg.tol, backend=backend,
                       eps_scaling=cfg.eps_scaling)
    return ops.sample_plan(res.log_plan, cfg.sampling, n=n, generator=generator)


def couple(
    x0: torch.Tensor,
    x1: torch.Tensor,
    y: torch.Tensor,
    cfg: CouplingConfig,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-pair a minibatch: returns (x0[i], x1[j], y[j])."""
    i, j = couple_indices(x0, x1, cfg, generator, backend)
    return x0[i], x1[j], y[j]
