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
DATA_MODES = ("auto", "memory", "stream")

# Fields that may change when a run is resumed: they do not change the model or the math of a
# step (``steps`` stretches the LR schedule to the new total). Every other field must match.
RESUMABLE_CHANGES = frozenset({
    "data", "out", "steps", "num_workers", "data_mode", "compile", "device", "precision",
    "channels_last", "log_every", "ckpt_every", "keep_ckpts", "val_every", "val_images",
    "sample_every", "sample_steps", "sample_images", "tensorboard", "resume", "max_nonfinite",
    "latent", "latent_diffusers", "skip_bad", "overwrite",
})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        data: dataset root (ROOT/<domain>/*.png|tif|dcm [+ manifest.csv]).
        out: run directory.
        preset: model preset (tiny | small | base).
        model_channels: base width instead of the preset's.
        image_size: training resolution in pixels (images are resized/cropped to it).
        domains: comma-separated domain names to train on, label order (default: all found).
        domain_map: FOLDER=DOMAIN,... renames/merges dataset folders (or manifest domains)
            into domains (data.parse_domain_map); default: folder names as they are.
        skip_bad: log and skip unreadable image files instead of stopping at the first one.
        resize: how images that are not square at ``image_size`` are fitted: "crop" (short side
            to S, centre crop) or "pad" (long side to S, zero-pad).
        crop: train on random crop x crop windows of the model-space images (one window per
            image per micro-batch, drawn from the run's generator); default: whole images. The
            U-Net is fully convolutional, so a model trained on crops translates whole images;
            a translation keeps the source's layout, so local appearance is what it must learn
            (cf. Patch Diffusion). Must divide by the U-Net's downsampling factor.
        steps: optimizer steps.
        batch_size: images per optimizer step, summed over ranks and accumulation micro-steps
            (the OT coupling is solved over batch_size / grad_accum images at a time).
        grad_accum: micro-batches per optimizer step (gradient accumulation).
        balanced: class-balanced sampling (every domain equally often) instead of epochs of
            uniform random permutations.
        lr: AdamW peak learning rate (one-cycle cosine schedule).
        weight_decay: AdamW weight decay.
        warmup_frac: fraction of the steps spent warming the learning rate up.
        grad_clip: gradient-norm clip; <= 0 disables clipping (the norm is still logged).
        sigma: Schrödinger-bridge noise (entropic eps = 2 sigma^2); 0 = OT-CFM.
        coupling: sinkhorn | exact | independent.
        plan_sampling: multinomial | conditional | assignment.
        eps_relative: if set, eps = eps_relative * mean cost instead of 2 sigma^2.
        p_uncond: label-dropout rate for classifier-free guidance.
        ema_decay: EMA decay (EMA weights are sampled and exported).
        seed: RNG seed (model init, data order, noise, coupling).
        precision: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16.
        channels_last: channels_last memory format for the U-Net's weights and inputs (default:
            measured 1.1-1.25x faster training steps on the CPU, and the layout cuDNN's bf16
            convolutions prefer; ``--no-channels-last`` turns it off).
        compile: wrap the model in torch.compile.
        num_workers: DataLoader workers for the stream data mode.
        data_mode: memory (decode every image once, keep them in memory: fast for small
            datasets) | stream (DataLoader over the files, num_workers processes) | auto
            (memory unless num_workers > 0 or the decoded set exceeds 4 GiB).
        max_nonfinite: stop after this many non-finite losses/gradients in a row (each is
            skipped and counted).
        log_every: log.csv / progress interval in steps.
        ckpt_every: keep a checkpoint under RUN/checkpoints/ every N steps (RUN/ itself always
            holds the last one).
        keep_ckpts: how many RUN/checkpoints/step_* to keep (0 = all).
        val_every: validation loss (EMA model, val split, fixed generator) every N steps; the
            best one is kept in RUN/best/ (0 = off).
        val_images: at most this many validation images.
        sample_every: PNG grid of samples per domain and translations of fixed validation
            images under RUN/samples/ every N steps (0 = off).
        sample_steps: solver steps per leg for that grid.
        sample_images: samples per domain in that grid.
        tensorboard: also log to RUN/tb (needs the tensorboard package).
        resume: "last" (the run in ``out``) or a checkpoint directory to continue from.
        overwrite: replace a run already in ``out`` (otherwise training into it is refused
            unless resuming).
        latent: train in the latent space of an autoencoder run (`medshift train-autoencoder`).
        latent_diffusers: train in the latent space of a local diffusers AutoencoderKL folder.
        device: auto | cpu | cuda | cuda:N (under torchrun: the rank's local GPU).
    """

    data: str = ""
    out: str = "runs/run"
    preset: str = "tiny"
    model_channels: int | None = None
    image_size: int = 32
    domains: tuple[str, ...] | None = None
    domain_map: str | None = None
    skip_bad: bool = False
    resize: str = "crop"
    crop: int | None = None
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    balanced: bool = False
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
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 0
    data_mode: str = "auto"
    max_nonfinite: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 3
    val_every: int = 500
    val_images: int = 64
    sample_every: int = 1000
    sample_steps: int = 8
    sample_images: int = 4
    tensorboard: bool = False
    resume: str | None = None
    overwrite: bool = False
    latent: str | None = None
    latent_diffusers: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.batch_size % self.grad_accum == 0,
             f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"),
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.resize in ("crop", "pad"), f"resize must be crop or pad, got {self.resize!r}"),
            (self.crop is None or 8 <= self.crop,
             f"crop must be >= 8 (or None for whole images), got {self.crop}"),
            (self.model_channels is None or self.model_channels >= 1,
             "model_channels must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.warmup_frac < 1.0, "warmup_frac must be in [0, 1)"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (0.0 <= self.p_uncond < 1.0, "p_uncond must be in [0, 1)"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.coupling in COUPLINGS, f"coupling must be one of {COUPLINGS}"),
            (self.plan_sampling in PLAN_SAMPLING_MODES,
             f"plan_sampling must be one of {PLAN_SAMPLING_MODES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.data_mode in DATA_MODES, f"data_mode must be one of {DATA_MODES}"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "log_every/ckpt_every must be >= 1"),
            (min(self.keep_ckpts, self.val_every, self.sample_every) >= 0,
             "keep_ckpts/val_every/sample_every must be >= 0"),
            (self.val_images >= 1 and self.sample_steps >= 1 and self.sample_images >= 1,
             "val_images/sample_steps/sample_images must be >= 1"),
            (not (self.latent and self.latent_diffusers),
             "pass either latent or latent_diffusers, not both"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MedShiftError(f"TrainConfig: {msg}")

    @property
    def micro_batch(self) -> int:
        """Images per coupling / micro-step, summed over ranks."""
        return self.batch_size // self.grad_accum

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


def check_resumable(saved: TrainConfig, current: TrainConfig) -> None:
    """Refuse to resume when a field that shapes the model or the math of a step differs.

    Raises:
        MedShiftError: naming the first differing field and both values.
    """
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        a, b = getattr(saved, f.name), getattr(current, f.name)
        if a != b:
            raise MedShiftError(
                f"cannot resume: the checkpoint was trained with {f.name}={a!r} but this run "
                f"asks for {f.name}={b!r}; pass the same value (or start a new run with another "
                "--out)")

