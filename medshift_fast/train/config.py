"""Frozen, validated training configuration that round-trips to JSON (saved beside every run)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import MedShiftError
from ..flow.coupling import COUPLINGS
from ..ops.reference import PLAN_SAMPLING_MODES

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        data: dataset root (ROOT/<domain>/*.png|tif|dcm [+ manifest.csv]).
        out: run directory.
        preset: model preset (tiny | small | base).
        image_size: training resolution (images are resized/cropped to it).
        domains: domain names to train on (label = index); None = all found.
        steps: optimizer steps.
        batch_size: images per step (global batch).
        lr, weight_decay, warmup_frac, grad_clip: AdamW + one-cycle cosine schedule.
        sigma: Schrödinger-bridge noise (entropic eps = 2 sigma^2); 0 = OT-CFM.
        coupling: sinkhorn | exact | independent.
        plan_sampling: multinomial | conditional | assignment.
        eps_relative: if set, eps = eps_relative * mean cost instead of 2 sigma^2.
        p_uncond: label-dropout rate for classifier-free guidance.
        ema_decay: EMA decay (EMA weights are sampled and exported).
        seed: RNG seed.
        precision: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (autocast).
        channels_last: channels_last memory format (faster on CPU with bf16).
        num_workers: DataLoader workers.
        log_every, ckpt_every: logging / checkpoint intervals in steps.
        device: auto | cpu | cuda | cuda:N.
    """

    data: str = ""
    out: str = "runs/run"
    preset: str = "tiny"
    image_size: int = 32
    domains: tuple[str, ...] | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    sigma: float = 0.1
    coupling: str = "sinkhorn"
    plan_sampling: str = "conditional"
    eps_relative: float | None = None
    p_uncond: float = 0.2
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = False
    num_workers: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.warmup_frac < 1.0, "warmup_frac must be in [0, 1)"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (0.0 <= self.p_uncond < 1.0, "p_uncond must be in [0, 1)"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.coupling in COUPLINGS, f"coupling must be one of {COUPLINGS}"),
            (self.plan_sampling in PLAN_SAMPLING_MODES,
             f"plan_sampling must be one of {PLAN_SAMPLING_MODES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "log_every/ckpt_every must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MedShiftError(f"TrainConfig: {msg}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise MedShiftError(f"TrainConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_json(Path(path).read_text())
