"""Turns a data minibatch (x_1, y) into one class-conditional SB flow-matching training batch.

With several processes the coupling is GLOBAL (``group``): x_1 and y are gathered from every
rank, ONE plan pairs the global micro-batch with noise drawn identically on every rank (same
generator state), the pair indices of rank 0 are broadcast (ranks can never disagree, e.g. with
non-deterministic GEMMs on different GPUs), and each rank keeps its contiguous share of the
pairs. With one process this draws exactly the same numbers in the same order, so a P-rank run
trains on the pairs of a one-process run with the same global batch. (torchcfm's coupling, by
contrast, is per GPU: each rank solves its own b x b plan.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import MedShiftError
from .coupling import CouplingConfig, couple_indices
from .paths import T_EPS, sample_t, sb_sample_xt, sb_target


@dataclass
class FlowBatch:
    """t (B,), x_t (B, ...), u_t (B, ...) target velocity, y (B,) labels (null = num_classes)."""

    t: torch.Tensor
    x_t: torch.Tensor
    u_t: torch.Tensor
    y: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor


class CouplingGroup(Protocol):
    """The processes that share one coupling (``train.distributed.DistInfo`` is one)."""

    rank: int
    world: int

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped (b, ...) tensors of every rank along dim 0, rank order."""

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Overwrite x with rank 0's x (in place) and return it."""


def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    # a CPU generator draws on the CPU (identical numbers on every device); a CUDA one on the GPU
    if generator is not None and generator.device.type != "cpu":
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


class SBFlowMatcher:
    """Class-conditional Schrödinger-bridge conditional flow matcher.

    For data x_1 with labels y: draw x_0 ~ N(0, I), couple (x_0, x_1) by minibatch OT (labels
    travel with x_1), draw t and z, build x_t and u_t (flow/paths.py), and replace a fraction
    ``p_uncond`` of labels by the null label ``num_classes`` (classifier-free guidance).
    """

    def __init__(
        self,
        num_classes: int,
        coupling: CouplingConfig | None = None,
        p_uncond: float = 0.2,
        t_eps: float = T_EPS,
    ) -> None:
        self.num_classes = num_classes
        self.coupling = coupling or CouplingConfig()
        self.p_uncond = p_uncond
        self.t_eps = t_eps

    @property
    def sigma(self) -> float:
        return self.coupling.sigma

    @torch.no_grad()
    def __call__(
        self,
        x1: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        x0: torch.Tensor | None = None,
        noise_generator: torch.Generator | None = None,
        group: CouplingGroup | None = None,
        p_uncond: float | None = None,
    ) -> FlowBatch:
        """Build this process's share of a training batch.

        Args:
            x1: (b, C, H, W) this rank's data; y: (b,) int64 labels.
            generator: CPU generator for plan sampling, t and label dropout (the same state on
                every rank).
            x0: optional (b * world, ...) noise instead of drawing it.
            noise_generator: generator for x_0 and z (default ``generator``; may be a CUDA one).
            group: the processes sharing the coupling (None: this process alone).
            p_uncond: label-dropout rate for this batch (default ``self.p_uncond``; 0 for
                validation).

        Returns:
            FlowBatch with b rows: pairs rank*b .. (rank+1)*b - 1 of the global batch.
        """
        dev, b = x1.device, x1.shape[0]
        world, rank = (group.world, group.rank) if group is not None else (1, 0)
        ng = noise_generator or generator
        bg = b * world
        if x0 is None:
            x0 = _randn((bg, *x1.shape[1:]), ng, dev).to(x1.dtype)
        y = y.to(dev)
        x1g = group.gather(x1) if world > 1 else x1
        yg = group.gather(y) if world > 1 else y
        i, j = couple_indices(x0, x1g, self.coupling, generator)
        if world > 1:  # rank 0's draw for everyone
            ij = group.broadcast(torch.stack([i, j]).to(dev))
            i, j = ij[0].to(x0.device), ij[1].to(x0.device)
        if i.shape[0] != bg:
            raise MedShiftError(f"coupling returned {i.shape[0]} pairs for a global batch of {bg}")
        t = sample_t(bg, dev, generator, self.t_eps)
        z = _randn((bg, *x1.shape[1:]), ng, dev).to(x1.dtype) if self.sigma > 0 else None
        p = self.p_uncond if p_uncond is None else p_uncond
        drop = torch.rand(bg, generator=generator).to(dev) < p if p > 0 else None
        s = slice(rank * b, (rank + 1) * b)
        x0s, x1s, ys, ts = x0[i[s]], x1g[j[s]], yg[j[s]], t[s]
        zs = z[s] if z is not None else None
        if drop is not None:
            ys = torch.where(drop[s], torch.full_like(ys, self.num_classes), ys)
        return FlowBatch(t=ts, x_t=sb_sample_xt(x0s, x1s, ts, self.sigma, zs),
                         u_t=sb_target(x0s, x1s, ts, self.sigma, zs), y=ys, x0=x0s, x1=x1s)
