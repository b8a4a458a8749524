"""Pairwise squared-distance cost and plan sampling, dispatched.

Backends:
    reference: ``pairwise_sqdist_ref`` (one GEMM + norms) and ``sample_plan_ref`` (multinomial
        draws on the host, Gumbel noise drawn on the host, scipy's Hungarian method).
    triton (``medshift_fast.kernels.sinkhorn``; picked by ``auto`` for CUDA tensors):
        pairwise_sqdist: one tiled kernel, the squared norms accumulated in the same pass over the
            features as the dot products (IEEE fp32 dots for fp32 inputs; fp16/bf16 inputs use
            the tensor cores with fp32 accumulation).
        sample_plan: everything stays on the plan's device: ``multinomial`` by inverse CDF
            (cumsum + searchsorted: any N x M, no host copy of the plan), ``conditional`` by a
            Gumbel-max kernel with counter-based noise (no N x M noise tensor); ``assignment``
            (the exact Hungarian method) still runs on the host.
"""

from __future__ import annotations

import torch

from .. import _backend
from .reference import PLAN_SAMPLING_MODES, pairwise_sqdist_ref, sample_plan_ref

__all__ = ["pairwise_sqdist", "sample_plan", "PLAN_SAMPLING_MODES"]

_SUPPORTED_COST = ("reference", "triton")
_SUPPORTED_SAMPLE = ("reference", "triton")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _supported(supported: tuple[str, ...], *tensors: torch.Tensor) -> tuple[str, ...]:
    if all(t.dtype in _DTYPES for t in tensors):
        return supported
    return ("reference",)


def pairwise_sqdist(x0: torch.Tensor, x1: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """C_ij = ||x0_i - x1_j||^2 for (N, ...) and (M, ...) tensors -> (N, M) fp32 (one GEMM).

    Args:
        x0: (N, ...) samples; x1: (M, ...) samples with the same trailing size.
        backend: reference | triton | auto (None: the context's backend).

    Returns:
        (N, M) fp32 cost, clamped at 0.
    """
    name = _backend.resolve("pairwise_sqdist", x0.device.type,
                            _supported(_SUPPORTED_COST, x0, x1), backend)
    if name != "triton":
        return pairwise_sqdist_ref(x0, x1)
    a = x0.reshape(x0.shape[0], -1)
    b = x1.reshape(x1.shape[0], -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"pairwise_sqdist: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    if a.dtype != b.dtype:
        a, b = a.float(), b.float()
    return _backend.import_kernels("sinkhorn").pairwise_sqdist(a, b)


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n fp64 uniforms on ``device``, drawn from ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.rand(n, device=device, dtype=torch.float64)
    return torch.rand(n, generator=generator, device=generator.device,
                      dtype=torch.float64).to(device)


def _sample_device(log_plan, mode, n, generator):
    N, M = log_plan.shape
    dev = log_plan.device
    if mode == "multinomial":
        n = N if n is None else n
        p = torch.softmax(log_plan.reshape(-1).to(torch.float32), 0)
        cdf = torch.cumsum(p, 0, dtype=torch.float64)
        total = cdf[-1]
        if not bool(torch.isfinite(total) & (total > 0)):
            raise FloatingPointError("sample_plan: plan is not a valid distribution")
        idx = torch.searchsorted(cdf, _uniform(n, generator, dev) * total, right=True)
        idx = idx.clamp_max_(N * M - 1)
        return idx // M, idx % M
    if mode == "conditional":
        gdev = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gdev))
        j = _backend.import_kernels("sinkhorn").gumbel_argmax_rows(log_plan, seed)
        return torch.arange(N, device=dev), j
    return sample_plan_ref(log_plan, mode, n, generator)


def sample_plan(
    log_plan: torch.Tensor,
    mode: str = "multinomial",
    n: int | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (i, j) pairs from a (N, M) log-plan; see ``reference.sample_plan_ref`` for modes.

    Args:
        log_plan: (N, M) log transport plan (unnormalised is fine).
        mode: multinomial | conditional | assignment.
        n: number of multinomial draws (default N).
        generator: torch.Generator for reproducible draws (any device).
        backend: reference | triton | auto (None: the context's backend).

    Returns:
        (i, j) int64 index tensors on the plan's device.
    """
    if mode not in PLAN_SAMPLING_MODES:
        raise ValueError(f"sample_plan: unknown mode {mode!r}; choose one of {PLAN_SAMPLING_MODES}")
    name = _backend.resolve("sample_plan", log_plan.device.type,
                            _supported(_SUPPORTED_SAMPLE, log_plan), backend)
    if name != "triton" or log_plan.dim() != 2:
        return sample_plan_ref(log_plan, mode, n, generator)
    return _sample_device(log_plan, mode, n, generator)
