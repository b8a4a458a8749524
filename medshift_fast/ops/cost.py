"""Pairwise squared-distance cost and plan sampling, dispatched."""

from __future__ import annotations

import torch

from .. import _backend
from .reference import PLAN_SAMPLING_MODES, pairwise_sqdist_ref, sample_plan_ref

__all__ = ["pairwise_sqdist", "sample_plan", "PLAN_SAMPLING_MODES"]

_SUPPORTED_COST = ("reference",)
_SUPPORTED_SAMPLE = ("reference",)


def pairwise_sqdist(x0: torch.Tensor, x1: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """C_ij = ||x0_i - x1_j||^2 for (N, ...) and (M, ...) tensors -> (N, M) fp32 (one GEMM)."""
    _backend.resolve("pairwise_sqdist", x0.device.type, _SUPPORTED_COST, backend)
    return pairwise_sqdist_ref(x0, x1)


def sample_plan(
    log_plan: torch.Tensor,
    mode: str = "multinomial",
    n: int | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (i, j) pairs from a (N, M) log-plan; see ``reference.sample_plan_ref`` for modes."""
    _backend.resolve("sample_plan", log_plan.device.type, _SUPPORTED_SAMPLE, backend)
    return sample_plan_ref(log_plan, mode, n, generator)
