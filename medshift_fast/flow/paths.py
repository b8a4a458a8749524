"""Schrödinger-bridge (Brownian-bridge) probability path and its conditional target.

    x_t = t x_1 + (1 - t) x_0 + sigma sqrt(t (1 - t)) z,            z ~ N(0, I)
    u_t = x_1 - x_0 + (1 - 2t) / (2 t (1 - t)) (x_t - t x_1 - (1 - t) x_0)
        = x_1 - x_0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) z          (computed from z directly)

sigma = 0 gives the straight (OT-)CFM path with u_t = x_1 - x_0 through the same code.
t is kept in [t_eps, 1 - t_eps] so the target never divides by zero.
"""

from __future__ import annotations

import torch

T_EPS = 1e-4


def sample_t(
    n: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    t_eps: float = T_EPS,
) -> torch.Tensor:
    """t ~ U(t_eps, 1 - t_eps), shape (n,), fp32."""
    u = torch.rand(n, generator=generator, device="cpu").to(device)
    return t_eps + (1.0 - 2.0 * t_eps) * u


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def sb_sample_xt(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma: float, z: torch.Tensor | None
) -> torch.Tensor:
    """x_t on the Brownian bridge between x0 (B, ...) and x1 (B, ...) at times t (B,)."""
    tb = _bcast(t, x1)
    xt = tb * x1 + (1.0 - tb) * x0
    if sigma > 0:
        if z is None:
            raise ValueError("sb_sample_xt: z is required when sigma > 0")
        xt = xt + sigma * torch.sqrt(tb * (1.0 - tb)) * z
    return xt


def sb_target(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma: float, z: torch.Tensor | None
) -> torch.Tensor:
    """u_t = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t(1-t))) z (the conditional SB velocity)."""
    u = x1 - x0
    if sigma > 0:
        if z is None:
            raise ValueError("sb_target: z is required when sigma > 0")
        tb = _bcast(t, x1)
        u = u + sigma * (1.0 - 2.0 * tb) / (2.0 * torch.sqrt(tb * (1.0 - tb))) * z
    return u
