"""The fields of the one training loop (``train.trainer``), shared by every trainable config.

``TrainConfig`` (flow), ``AutoencoderTrainConfig`` and ``DistillConfig`` extend it with what
they train; a field they need with another default is redeclared there. Frozen, validated,
JSON round trip.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import MedShiftError, check_field_types

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The training loop's settings.

    Attributes:
        out: run directory.
        steps: optimizer steps.
        batch_size: images per optimizer step, summed over ranks and accumulation micro-steps.
        grad_accum: micro-batches per optimizer step (gradient accumulation).
        lr: AdamW peak learning rate (one-cycle cosine schedule).
        weight_decay: AdamW weight decay.
        warmup_frac: fraction of the steps spent warming the learning rate up.
        grad_clip: gradient-norm clip; <= 0 disables clipping (the norm is still logged).
        ema_decay: EMA decay (the EMA weights are what gets used and exported; 0 = raw).
        seed: RNG seed (initialisation, data order, noise).
        precision: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16.
        channels_last: channels_last memory format for the weights and inputs.
        compile: wrap the model in torch.compile.
        max_nonfinite: stop after this many non-finite losses/gradients in a row (each is
            skipped and counted).
        log_every: log.csv / progress interval in steps.
        ckpt_every: keep a checkpoint under RUN/checkpoints/ every N steps (RUN/ itself always
            holds the last one).
        keep_ckpts: how many RUN/checkpoints/step_* to keep (0 = all).
        val_every: validation every N steps; the best checkpoint is kept in RUN/best/ (0 = off).
        tensorboard: also log to RUN/tb (needs the tensorboard package).
        resume: continue exactly: "last" (the run in out) or a checkpoint directory.
        overwrite: replace a run already in out (otherwise training into it is refused unless
            resuming).
        device: auto | cpu | cuda | cuda:N (under torchrun: the rank's local GPU).
        minutes: wall-clock budget of the run in minutes (all resumes together, data loading
            included): training stops with a checkpoint when the next step would end past it,
            whatever the load on the machine. steps is then the most steps, and the LR
            schedule follows the clock (warm-up and cosine over the budget, or over the steps
            if they run out first), so such a run is not bit-reproducible. Default: no budget.
    """

    out: str = "runs/run"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    max_nonfinite: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 3
    val_every: int = 500
    tensorboard: bool = False
    resume: str | None = None
    overwrite: bool = False
    device: str = "auto"
    minutes: float | None = None

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs; subclasses add theirs."""
        return [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.batch_size % self.grad_accum == 0,
             f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.warmup_frac < 1.0, "warmup_frac must be in [0, 1)"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "log_every/ckpt_every must be >= 1"),
            (min(self.keep_ckpts, self.val_every) >= 0, "keep_ckpts/val_every must be >= 0"),
            (self.minutes is None or 0 < self.minutes < math.inf,
             f"minutes must be a positive number of minutes, got {self.minutes}"),
        ]

    def __post_init__(self) -> None:
        check_field_types(self)  # a wrong-typed value names its field, before any comparison
        for ok, msg in self.checks():
            if not ok:
                raise MedShiftError(f"{type(self).__name__}: {msg}")

    @property
    def micro_batch(self) -> int:
        """Images per micro-step, summed over ranks."""
        return self.batch_size // self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown and strict:
            raise MedShiftError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


# Loop fields every task may change on resume: they change neither the model nor a step's math.
LOOP_RESUMABLE = frozenset({"minutes"})


def resume_check(saved: dict[str, Any], current: LoopConfig, resumable: frozenset[str]) -> None:
    """Refuse to resume when a field outside ``resumable`` (and ``LOOP_RESUMABLE``) differs,
    naming it and both values."""
    for f in fields(current):
        if f.name in resumable or f.name in LOOP_RESUMABLE or f.name not in saved:
            continue
        a, b = saved[f.name], getattr(current, f.name)
        if (tuple(a) if isinstance(a, list) else a) != b:
            raise MedShiftError(
                f"cannot resume: the checkpoint was trained with {f.name}={a!r} but this run "
                f"asks for {f.name}={b!r}; pass the same value (or start a new run with another "
                "--out)")
