"""Turns a data minibatch (x_1, y) into one class-conditional SB flow-matching training batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .coupling import CouplingConfig, couple
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

    def __call__(
        self,
        x1: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        x0: torch.Tensor | None = None,
    ) -> FlowBatch:
        """Build a training batch. x1: (B, C, H, W) data in [-1, 1]; y: (B,) int64 labels."""
        dev = x1.device
        b = x1.shape[0]
        if x0 is None:
            x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(dev, x1.dtype)
        x0, x1, y = couple(x0, x1, y, self.coupling, generator)
        b = x1.shape[0]
        t = sample_t(b, dev, generator, self.t_eps)
        z = None
        if self.sigma > 0:
            z = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(dev, x1.dtype)
        x_t = sb_sample_xt(x0, x1, t, self.sigma, z)
        u_t = sb_target(x0, x1, t, self.sigma, z)
        if self.p_uncond > 0:
            drop = torch.rand(b, generator=generator).to(dev) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return FlowBatch(t=t, x_t=x_t, u_t=u_t, y=y, x0=x0, x1=x1)
