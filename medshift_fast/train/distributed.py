"""Multi-process training: the process group from torchrun's environment.

``torchrun --nproc_per_node=P -m medshift_fast train ...`` (and multi-node via torchrun's usual
rendezvous flags) starts P processes with RANK / WORLD_SIZE / LOCAL_RANK set; :func:`init_from_env`
joins them (NCCL on CUDA, gloo on CPU). Each rank loads its share of every global micro-batch
(``train/data.py``); :class:`DistInfo` is the ``flow.matcher.CouplingGroup`` through which
``SBFlowMatcher`` builds ONE coupling of the whole global micro-batch (see flow/matcher.py), and
DDP averages the per-rank gradients (the gradient of the global mean loss).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import MedShiftError


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

    # the flow.matcher.CouplingGroup interface: the global coupling over all ranks
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return all_gather_cat(x, self)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        return broadcast_(x, self)


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
