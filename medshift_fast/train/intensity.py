"""The unpaired intensity map of ``medshift distill --method adversarial``'s structure and
denoise terms: the monotone piecewise-linear map that sends one distribution of values to another
(quantile matching), applied, and its slope."""

from __future__ import annotations

import torch

__all__ = ["apply_map", "intensity_map", "map_slope", "per_pair"]


def intensity_map(a: torch.Tensor, b: torch.Tensor, n: int = 257,
                  max_values: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile knots (qa, qb) of the monotone map that sends the distribution of the values of
    ``a`` to that of ``b`` (each subsampled evenly to at most ``max_values``)."""
    q = torch.linspace(0.0, 1.0, n, dtype=torch.float64)

    def knots(v):
        v = v.detach().flatten().double()
        return torch.quantile(v[::max(1, v.numel() // max_values)], q)

    qa, qb = knots(a), knots(b)
    return torch.cummax(qa, 0).values.float(), torch.cummax(qb, 0).values.float()


def apply_map(x: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map through the knots (constant beyond the end knots)."""
    flat = x.flatten()
    i = torch.searchsorted(qa, flat.contiguous()).clamp(1, qa.numel() - 1)
    x0, x1, y0, y1 = qa[i - 1], qa[i], qb[i - 1], qb[i]
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).view_as(x)


def map_slope(x: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """The slope of :func:`apply_map`'s piecewise-linear map at x (0 beyond the end knots)."""
    flat = x.flatten()
    i = torch.searchsorted(qa, flat.contiguous()).clamp(1, qa.numel() - 1)
    dx = qa[i] - qa[i - 1]
    inside = (flat >= qa[0]) & (flat <= qa[-1]) & (dx > 1e-12)
    return torch.where(inside, (qb[i] - qb[i - 1]) / dx.clamp_min(1e-12),
                       torch.zeros_like(flat)).view_as(x)


@torch.no_grad()
def per_pair(maps: dict, fn, out: torch.Tensor, lx: torch.Tensor, ys: torch.Tensor,
             yt: torch.Tensor) -> torch.Tensor:
    """``out`` with each crop of a pair in ``maps`` ((source, target) -> per-channel knots)
    replaced by ``fn(lx, *its knots)`` per channel (``fn``: :func:`apply_map`,
    :func:`map_slope`)."""
    for (a, b), knots in maps.items():
        m = (ys == a) & (yt == b)
        if bool(m.any()):
            out[m] = torch.cat([fn(lx[m][:, c:c + 1], *knots[c]) for c in range(lx.shape[1])], 1)
    return out
