"""Exponential moving average of model weights (what gets sampled and exported)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow = decay * shadow + (1 - decay) * param, after every optimizer step.

    Buffers (e.g. none in the U-Net) are copied. ``module`` is a full model copy in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = dict(model.named_parameters())
        dst = list(self.module.named_parameters())
        # one multi-tensor lerp instead of a Python loop of ~100 small kernels per step
        torch._foreach_lerp_(
            [p for _, p in dst],
            [src[name].detach().to(p.dtype) for name, p in dst],
            1.0 - self.decay,
        )
        src_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(src_b[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd)
