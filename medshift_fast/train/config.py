"""Frozen, validated training configuration that round-trips to JSON (saved beside every run)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..flow.coupling import COUPLINGS
from ..ops.reference import PLAN_SAMPLING_MODES
from .loop_config import LoopConfig, resume_check

DATA_MODES = ("auto", "memory", "stream")

# Fields that may change when a run is resumed: they do not change the model or the math of a
# step (``steps`` stretches the LR schedule to the new total). Every other field must match.
RESUMABLE_CHANGES = frozenset({
    "data", "out", "steps", "num_workers", "data_mode", "compile", "device", "precision",
    "channels_last", "log_every", "ckpt_every", "keep_ckpts", "val_every", "val_images",
    "sample_every", "sample_steps", "sample_images", "tensorboard", "resume", "max_nonfinite",
    "latent", "latent_diffusers", "skip_bad", "overwrite",
})


@dataclass(frozen=True, kw_only=True)
class TrainConfig(LoopConfig):
    """Everything that defines a training run (the loop's own fields: ``LoopConfig``).

    Attributes:
        data: dataset root (ROOT/<domain>/*.png|tif|dcm [+ manifest.csv]).
        preset: model preset (tiny | small | base).
        model_channels: base width instead of the preset's.
        image_size: training resolution in pixels (images are resized/cropped to it; with
            ``native``, set to the crop).
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
        native: train on random crop x crop windows of each image's OWN pixel grid (no
            resizing to image_size; needs --crop, pixel space): images are decoded from the
            files as they are drawn (data mode stream; use --num-workers), never all held in
            memory; the run records the native scale (and the pixel spacing when the files
            declare one), so ``translate`` works on an input's own grid by default.
        batch_size: images per optimizer step, summed over ranks and accumulation micro-steps
            (the OT coupling is solved over batch_size / grad_accum images at a time).
        balanced: class-balanced sampling (every domain equally often) instead of epochs of
            uniform random permutations.
        sigma: Schrödinger-bridge noise (entropic eps = 2 sigma^2); 0 = OT-CFM.
        coupling: sinkhorn | exact | independent.
        plan_sampling: multinomial | conditional | assignment.
        eps_relative: if set, eps = eps_relative * mean cost instead of 2 sigma^2.
        p_uncond: label-dropout rate for classifier-free guidance.
        seed: RNG seed (model init, data order, noise, coupling).
        channels_last: channels_last memory format for the U-Net's weights and inputs (default:
            measured 1.1-1.25x faster training steps on the CPU, and the layout cuDNN's bf16
            convolutions prefer; ``--no-channels-last`` turns it off).
        num_workers: DataLoader workers for the stream data mode.
        data_mode: memory (decode every image once, keep them in memory: fast for small
            datasets) | stream (DataLoader over the files, num_workers processes) | auto
            (memory unless num_workers > 0 or the decoded set exceeds 4 GiB).
        val_every: validation loss (EMA model, val split, fixed generator) every N steps; the
            best one is kept in RUN/best/ (0 = off).
        val_images: at most this many validation images.
        sample_every: PNG grid of samples per domain and translations of fixed validation
            images under RUN/samples/ every N steps (0 = off).
        sample_steps: solver steps per leg for that grid.
        sample_images: samples per domain in that grid.
        latent: train in the latent space of an autoencoder run (`medshift train-autoencoder`).
        latent_diffusers: train in the latent space of a local diffusers AutoencoderKL folder.
    """

    data: str = ""
    preset: str = "tiny"
    model_channels: int | None = None
    image_size: int = 32
    domains: tuple[str, ...] | None = None
    domain_map: str | None = None
    skip_bad: bool = False
    resize: str = "crop"
    crop: int | None = None
    native: bool = False
    balanced: bool = False
    sigma: float = 0.1
    coupling: str = "sinkhorn"
    plan_sampling: str = "conditional"
    eps_relative: float | None = None
    p_uncond: float = 0.2
    num_workers: int = 0
    data_mode: str = "auto"
    val_images: int = 64
    sample_every: int = 1000
    sample_steps: int = 8
    sample_images: int = 4
    latent: str | None = None
    latent_diffusers: str | None = None

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.resize in ("crop", "pad"), f"resize must be crop or pad, got {self.resize!r}"),
            (self.crop is None or 8 <= self.crop,
             f"crop must be >= 8 (or None for whole images), got {self.crop}"),
            (self.model_channels is None or self.model_channels >= 1,
             "model_channels must be >= 1"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (0.0 <= self.p_uncond < 1.0, "p_uncond must be in [0, 1)"),
            (self.coupling in COUPLINGS, f"coupling must be one of {COUPLINGS}"),
            (self.plan_sampling in PLAN_SAMPLING_MODES,
             f"plan_sampling must be one of {PLAN_SAMPLING_MODES}"),
            (self.data_mode in DATA_MODES, f"data_mode must be one of {DATA_MODES}"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.sample_every >= 0, "sample_every must be >= 0"),
            (self.val_images >= 1 and self.sample_steps >= 1 and self.sample_images >= 1,
             "val_images/sample_steps/sample_images must be >= 1"),
            (not (self.latent and self.latent_diffusers),
             "pass either latent or latent_diffusers, not both"),
            (not self.native or self.crop is not None,
             "native training needs --crop N (the window side in pixels)"),
            (not self.native or not (self.latent or self.latent_diffusers),
             "native training runs in pixel space; leave out --latent"),
        ]

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        if self.native and self.crop is not None:
            object.__setattr__(self, "image_size", int(self.crop))
        super().__post_init__()

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_json(Path(path).read_text())


def check_resumable(saved: TrainConfig, current: TrainConfig) -> None:
    """Refuse to resume when a field that shapes the model or the math of a step differs.

    Raises:
        MedShiftError: naming the first differing field and both values.
    """
    resume_check(saved.to_dict(), current, RESUMABLE_CHANGES)

