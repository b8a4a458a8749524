"""Multi-process training: the process group from torchrun's environment, and the GLOBAL coupling.

``torchrun --nproc_per_node=P -m medshift_fast train ...`` (and multi-node via torchrun's usual
rendezvous flags) starts P processes with RANK / WORLD_SIZE / LOCAL_RANK set; :func:`init_from_env`
joins them (NCCL on CUDA, gloo on CPU). Each rank loads its share of every global micro-batch
(see ``train/data.py``), and :func:`global_flow_batch` builds the training batch from ONE coupling
of the whole global micro-batch:

    x_1, y  <- all_gather over ranks (rank order)          (B_g = P * b images)
    x_0     <- N(0, I), (B_g, ...) from a generator seeded identically on every rank
    (i, j)  <- couple_indices(x_0, x_1) : one entropic-OT plan for B_g x B_g, pairs drawn from it
              (solved redundantly on every rank, then rank 0's indices are broadcast so that ranks
              can never disagree, e.g. with non-deterministic GEMMs across different GPUs)
    t, z, label dropout for all B_g pairs from the same shared generator
    rank r trains on pairs r*b .. (r+1)*b - 1.

With P = 1 this draws exactly what ``flow.SBFlowMatcher`` draws (same order, same generator), so a
P-rank run trains on the same pairs as a single-process run with the same global batch; DDP's
gradient average of the per-rank mean losses equals the gradient of the global mean loss.
torchcfm's coupling, by contrast, is per GPU: each rank solves its own b x b plan.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import MedShiftError
from ..flow.coupling import CouplingConfig, couple_indices
from ..flow.matcher import FlowBatch
from ..flow.paths import T_EPS, sample_t, sb_sample_xt, sb_target


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, device, and whether it joined."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise MedShiftError(f"environment variable {name}={os.environ[name]!r} is not an "
                            "integer; launch with torchrun") from None


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1), if any.

    Args:
        device: auto | cpu | cuda | cuda:N. Under torchrun ``auto``/``cuda`` mean the rank's local
            GPU (LOCAL_RANK); without a GPU the ranks run on the CPU with gloo.

    Returns:
        DistInfo; ``owns_group`` is True when this call created the group (then
        :func:`shutdown` destroys it).
    """
    world = _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedShiftError(f"device {device!r} requested but no CUDA GPU is visible; use "
                            "--device cpu")
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        if device == "auto":
            dev = torch.device("cuda" if cuda else "cpu")
        else:
            dev = torch.device(device)
        return DistInfo(0, 1, 0, dev, False)
    if cuda:
        if device not in ("auto", "cuda"):
            raise MedShiftError(f"under torchrun each rank uses its local GPU; pass --device auto "
                                f"or cuda, not {device!r}")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        if not dist.is_available():
            raise MedShiftError("this torch build has no torch.distributed; train with one process")
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, owns)


def shutdown(info: DistInfo) -> None:
    """Wait for every rank, then destroy the group if :func:`init_from_env` created it."""
    if info.enabled and dist.is_initialized():
        barrier(info)
        if info.owns_group:
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equal-shaped (b, ...) tensors from every rank along dim 0 (rank order)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_(x: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    if info.enabled:
        dist.broadcast(x, src)
    return x


def no_sync(module, active: bool):
    """DDP's no_sync() during accumulation micro-steps (a null context otherwise)."""
    if active and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def _randn(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # identical draws to SBFlowMatcher for a CPU generator; a CUDA generator draws on the GPU
    if generator.device.type == "cpu":
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def global_couple_indices(
    x0: torch.Tensor,
    x1: torch.Tensor,
    cfg: CouplingConfig,
    generator: torch.Generator,
    info: DistInfo,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One coupling plan for the global batch.

    Args:
        x0: (B_g, ...) noise, identical on every rank.
        x1: (b, ...) this rank's data (b equal on every rank).
        cfg: coupling configuration.
        generator: plan-sampling generator, in the same state on every rank.
        info: process group.

    Returns:
        (i, j, x1_global): pair indices (B_g,) into x0 and x1_global, identical on every rank
        (rank 0's draw), and the gathered (B_g, ...) data.
    """
    x1g = all_gather_cat(x1, info)
    i, j = couple_indices(x0, x1g, cfg, generator)
    if info.enabled:
        ij = torch.stack([i, j]).to(info.device)
        broadcast_(ij, info)
        i, j = ij[0].to(x0.device), ij[1].to(x0.device)
    return i, j, x1g


@torch.no_grad()
def global_flow_batch(
    x1: torch.Tensor,
    y: torch.Tensor,
    cfg: CouplingConfig,
    num_classes: int,
    p_uncond: float,
    generator: torch.Generator,
    info: DistInfo,
    noise_generator: torch.Generator | None = None,
    t_eps: float = T_EPS,
) -> FlowBatch:
    """This rank's share of a flow-matching batch built from one global coupling.

    Args:
        x1: (b, C, H, W) this rank's data; y: (b,) its labels.
        cfg: coupling configuration; num_classes: K (null label = K); p_uncond: label dropout.
        generator: CPU generator for plan sampling, t and label dropout (same state on every rank).
        info: process group (world 1: no communication).
        noise_generator: generator for x_0 and z (default ``generator``; may live on the GPU).

    Returns:
        FlowBatch with b rows: pairs rank*b .. (rank+1)*b - 1 of the global batch.
    """
    dev, b = x1.device, x1.shape[0]
    ng = noise_generator or generator
    bg = b * info.world
    x0 = _randn((bg, *x1.shape[1:]), ng, dev).to(x1.dtype)
    y = y.to(dev)
    i, j, x1g = global_couple_indices(x0, x1, cfg, generator, info)
    yg = all_gather_cat(y, info)
    n = i.shape[0]
    if n != bg:
        raise MedShiftError(f"coupling returned {n} pairs for a global batch of {bg}")
    t = sample_t(bg, dev, generator, t_eps)
    z = _randn((bg, *x1.shape[1:]), ng, dev).to(x1.dtype) if cfg.sigma > 0 else None
    drop = torch.rand(bg, generator=generator).to(dev) < p_uncond if p_uncond > 0 else None
    s = slice(info.rank * b, (info.rank + 1) * b)
    x0s, x1s, ys, ts = x0[i[s]], x1g[j[s]], yg[j[s]], t[s]
    zs = z[s] if z is not None else None
    if drop is not None:
        ys = torch.where(drop[s], torch.full_like(ys, num_classes), ys)
    return FlowBatch(t=ts, x_t=sb_sample_xt(x0s, x1s, ts, cfg.sigma, zs),
                     u_t=sb_target(x0s, x1s, ts, cfg.sigma, zs), y=ys, x0=x0s, x1=x1s)
