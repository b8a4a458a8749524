"""The configuration of ``medshift distill`` (train/distill.py; the adversarial terms:
train/adversarial.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models.lean import LeanConfig
from ..models.student import STUDENT_ARCHS, STUDENT_METHODS
from ..models.texture import TEXTURES
from ..translate.settings import RECIPE
from .loop_config import LoopConfig

__all__ = ["DISTILL_METHODS", "DistillConfig"]

# how a student is trained; ``adversarial`` trains the ``oneshot`` network (models.student)
DISTILL_METHODS = (*STUDENT_METHODS, "adversarial")


@dataclass(frozen=True, kw_only=True)
class DistillConfig(LoopConfig):
    """``medshift distill``: distil a teacher run's translation into a student (loop fields:
    ``LoopConfig``).

    Attributes:
        teacher: the teacher run directory (``medshift train``).
        out: the student's run directory.
        data: dataset root (default: the one the teacher was trained on).
        pairs: source:target domain pairs, comma-separated, or all (every ordered pair);
            required when the teacher knows more than two domains (each pair adds its own
            teacher pass); default for a two-domain teacher: both directions.
        method: oneshot (regression onto the teacher's translations, one call) | meanflow
            (average velocity, two calls) | adversarial (one call: a discriminator on real
            target-domain images, the teacher's translations as a low-pass anchor and a
            structure term against the source; train/adversarial.py).
        tau_min: smallest translation time learned.
        tau_max: largest translation time learned.
        taus_per_image: teacher translations per training image and pair (oneshot).
        max_images: at most this many training images per source domain (default: all).
        guidance_encode: the teacher's encode guidance (default: the TranslationSettings default).
        guidance_decode: the teacher's decode guidance (default: the TranslationSettings default).
        solver: the teacher's solver (default: the TranslationSettings default).
        solver_steps: the teacher's solver steps per leg (default: the TranslationSettings default).
        crop: train on random crop x crop windows (default: whole images).
        channels_last: channels_last weights and inputs (oneshot; meanflow runs contiguous:
            forward-mode GroupNorm needs it).
        val_every: validation against the teacher every N steps, best kept in RUN/best (0: off).
        val_images: held-out images per pair for validation.
        init: a one-call student run to start from (default: the teacher's U-Net with a zero
            output layer, i.e. the identity).
        adv_weight: adversarial: weight of the generator's hinge loss.
        anchor_weight: adversarial: weight of the L1 distance to the teacher's translation.
        anchor_sigma: adversarial: the anchor compares Gaussian low-passes of this std in
            pixels (0: the full band), so the student may differ from the teacher in texture.
        structure_weight: adversarial: weight of the structure term between the low-passed
            translation and the low-passed source (the anatomy stays).
        structure_sigma: adversarial: std in pixels of that low-pass.
        structure_loss: adversarial: matched (L1 to the source's low-pass through the
            intensity map matching the source domain's training histogram to the target
            domain's) | l1 (to the source's low-pass itself) | ssim (1 - SSIM).
        disc_lr: adversarial: discriminator learning rate (Adam, betas 0 / 0.99, constant).
        disc_channels: adversarial: first-layer width of each discriminator scale.
        disc_scales: adversarial: resolutions the discriminator judges (1, 1/2, 1/4, ...).
        disc_gain: adversarial: scale of the fine-scale residual the discriminator sees beside
            the image (its spectral norm bounds its gain at 1, so a faint grain needs a large
            one).
        disc_whiten: adversarial: divide the discriminator's fine-scale residual by the target
            domain's measured noise std at each pixel's local signal (its detector noise model,
            fitted to the target's training images): the grain and the sharpness under it
            weigh the same in dark regions, where the grain is faint, as in bright ones.
        anchor_run: a one-call student run whose translation stands in for the teacher's,
            computed on the fly at any tau in range on every training image (no teacher
            cache): adversarial: the anchor (e.g. the --init run); oneshot: the regression
            target and the validation reference (re-distil a student into another network,
            e.g. --arch lean). Any one-call student of the same domains.
        diversity_weight: adversarial, stochastic students: weight of the mode-seeking term
            (-log of the mean fine-band difference between two noise draws' translations of
            the same crops): the texture must come from the noise input, not from the
            source's own noise.
        consistency_weight: adversarial: weight of the source-noise consistency term -- L1
            between the student's (noise-free) translations of a crop and of the same crop
            with fresh noise drawn from the SOURCE domain's detector noise model (fitted to its
            training images like ``texture``): a map that does not change when the source's
            noise changes has to remove it, while the discriminator keeps the edges sharp.
            One process only (a second forward per step; refused under torchrun).
        denoise_weight: adversarial: weight of the recorrupted-to-recorrupted denoising term
            (Pang et al., CVPR 2021; self-supervised, unpaired) -- MSE between the student's
            translation of a crop recorrupted by ``denoise_alpha`` x z and the crop recorrupted
            by -z / ``denoise_alpha`` passed through the pair's intensity map (linearised at
            the crop's low-pass), z drawn from the SOURCE domain's fitted noise model: the two
            noises are independent, so its minimiser is the noise-free translation (the
            posterior mean), whatever the source's own noise. One process only (a second
            forward per step; refused under torchrun).
        denoise_alpha: adversarial: the recorruption strength alpha of ``denoise_weight``.
        dose_weight: adversarial: weight of the dose-pair Noisier2Noise term (Moran et al.,
            CVPR 2020; unpaired, no truth) for the pairs in ``dose_pairs`` -- MSE between the
            student's noise-free translation of a REAL TARGET crop y plus the noise the source
            dose has on top of the target's (zero mean, variance a_src(s)^2 - a_tgt(s)^2 at the
            crop's local signal s, the target's detector correlation; both detector noise models
            fitted to each domain's training images like ``texture``) and y itself: its
            minimiser is the posterior mean of y given the source dose's noise level, so the
            noise-free member learns to remove exactly the source's extra noise, sharp, with no
            teacher in between. One process only (a second forward per step; refused under
            torchrun).
        dose_pairs: SOURCE:TARGET pairs (comma-separated, each one of ``pairs``) that differ by
            the dose alone -- the same detector and anatomy, more noise at the source (e.g.
            real_low:real_exposure); required by ``dose_weight``.
        anchor_cache: with anchor_run: translate every training image with it once, at
            taus_per_image random taus per image and pair, and keep them in
            RUN/teacher_cache.safetensors (reused on --resume) instead of translating every
            crop on the fly -- cheaper when steps x batch exceeds images x taus_per_image.
        arch: the student's network: unet (the teacher's U-Net, initialised from it) | lean
            (models/lean.py: pixel-unshuffle, low-resolution convolutions, no attention or
            normalisation; ~1/13 of the U-Net's arithmetic per pixel; starts as the identity;
            oneshot and adversarial only).
        lean_unshuffle: lean: pixel-unshuffle factor of the stem.
        lean_widths: lean: channels per level (each level halves the resolution).
        lean_blocks: lean: residual blocks per level (as many again on the way up).
        lean_kernel: lean: convolution kernel size (odd).
        lean_block: lean: conv (two k x k convolutions) | dw (depthwise + pointwise).
        noise_channels: lean: per-pixel standard-normal noise maps the student takes beside
            the image (0: a deterministic student; 1: stochastic, issue 29).
        noise_scale: the default scale of those noise maps at translation time (recorded in the
            student's config; the translation setting overrides it; training draws them at
            scale 1).
        texture: none | detector: the student makes the noise-free image and the target
            domain's mottle is drawn from a detector noise model fitted to its real training
            images (``models.texture``; the discriminator sees the translation plus that
            noise). Adversarial only; the student is then stochastic (one noise map).
        texture_top_up: with ``texture detector``: the noise the discriminator sees on top of
            each training translation adds only the variance that the batch's own noise-free
            translations lack (the top-up every saved run gets, measured on the batch), so the
            student is not pushed to remove noise it could keep (by default the discriminator
            sees the full fitted noise on top of whatever the translation carries).
    """

    teacher: str = ""
    out: str = "runs/student"
    data: str | None = None
    pairs: str | None = None
    method: str = "oneshot"
    tau_min: float = 0.3
    tau_max: float = 0.6
    taus_per_image: int = 2
    max_images: int | None = None
    guidance_encode: float | None = None
    guidance_decode: float | None = None
    solver: str | None = None
    solver_steps: int | None = None
    crop: int | None = None
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_frac: float = 0.05
    ema_decay: float = 0.995
    keep_ckpts: int = 1
    val_every: int = 250
    val_images: int = 6
    init: str | None = None
    adv_weight: float = 0.1
    anchor_weight: float = 1.0
    anchor_sigma: float = 2.0
    structure_weight: float = 1.0
    structure_sigma: float = 1.0
    structure_loss: str = "matched"
    disc_lr: float = 2e-4
    disc_channels: int = 32
    disc_scales: int = 3
    disc_gain: float = 100.0
    disc_whiten: bool = False
    anchor_run: str | None = None
    anchor_cache: bool = False
    diversity_weight: float = 0.0
    consistency_weight: float = 0.0
    denoise_weight: float = 0.0
    denoise_alpha: float = 0.5
    dose_weight: float = 0.0
    dose_pairs: str | None = None
    arch: str = "unet"
    lean_unshuffle: int = 2
    lean_widths: tuple[int, ...] = (32, 64)
    lean_blocks: tuple[int, ...] = (1, 2)
    lean_kernel: int = 3
    lean_block: str = "conv"
    noise_channels: int = 0
    noise_scale: float = 1.0
    texture: str = "none"
    texture_top_up: bool = False

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (bool(self.teacher), "pass --teacher RUN (a run written by `medshift train`)"),
            (self.method in DISTILL_METHODS, f"method must be one of {DISTILL_METHODS}"),
            (0.0 <= self.tau_min <= self.tau_max < 1.0,
             f"need 0 <= tau_min <= tau_max < 1, got {self.tau_min}..{self.tau_max}"),
            (self.taus_per_image >= 1, "taus_per_image must be >= 1"),
            (self.max_images is None or self.max_images >= 1, "max_images must be >= 1"),
            (self.crop is None or self.crop >= 8, "crop must be >= 8"),
            (self.val_images >= 1, "val_images must be >= 1"),
            (min(self.adv_weight, self.anchor_weight, self.anchor_sigma, self.structure_weight,
                 self.structure_sigma) >= 0, "adversarial weights and sigmas must be >= 0"),
            (self.disc_lr > 0 and self.disc_gain > 0 and min(self.disc_channels,
                                                              self.disc_scales) >= 1,
             "disc_lr and disc_gain must be > 0, disc_channels and disc_scales >= 1"),
            (self.init is None or self.method != "meanflow",
             "--init starts a one-call student; meanflow students start from the teacher"),
            (self.anchor_run is None or self.method != "meanflow",
             "--anchor-run applies to --method oneshot and adversarial"),
            (self.structure_loss in ("matched", "l1", "ssim"),
             "structure_loss must be matched, l1 or ssim"),
            (self.diversity_weight >= 0, "diversity_weight must be >= 0"),
            (self.consistency_weight >= 0, "consistency_weight must be >= 0"),
            (self.consistency_weight == 0 or self.method == "adversarial",
             "--consistency-weight applies to --method adversarial"),
            (self.denoise_weight >= 0, "denoise_weight must be >= 0"),
            (not self.disc_whiten or self.method == "adversarial",
             "--disc-whiten applies to --method adversarial"),
            (0 < self.denoise_alpha <= 4, "denoise_alpha must be in (0, 4]"),
            (self.denoise_weight == 0 or self.method == "adversarial",
             "--denoise-weight applies to --method adversarial"),
            (self.dose_weight >= 0, "dose_weight must be >= 0"),
            (self.dose_weight == 0 or self.method == "adversarial",
             "--dose-weight applies to --method adversarial"),
            ((self.dose_weight > 0) == bool(self.dose_pairs),
             "--dose-weight and --dose-pairs go together: name the pairs that differ by the "
             "dose alone (e.g. --dose-pairs real_low:real_exposure) and give the term a weight"),
            (self.diversity_weight == 0 or self.noise_channels > 0,
             "--diversity-weight needs a stochastic student (--noise-channels >= 1)"),
            (self.diversity_weight == 0 or self.method == "adversarial",
             "--diversity-weight applies to --method adversarial"),
            (self.anchor_run is not None or not self.anchor_cache,
             "--anchor-cache needs --anchor-run"),
            (self.arch in STUDENT_ARCHS, f"arch must be one of {STUDENT_ARCHS}"),
            (self.arch == "unet" or self.method != "meanflow",
             "--arch lean makes a one-call student: use --method oneshot or adversarial"),
            (self.arch == "lean" or self.noise_channels == 0,
             "--noise-channels needs --arch lean (the U-Net student takes no noise)"),
            (self.texture in TEXTURES,
             f"texture must be one of {', '.join(TEXTURES)}, got {self.texture!r}"),
            (self.texture == "none" or self.method == "adversarial",
             "--texture detector needs --method adversarial (its discriminator is what teaches "
             "the student the noise-free image)"),
            (not self.texture_top_up or self.texture == "detector",
             "--texture-top-up needs --texture detector"),
            (0.0 <= self.noise_scale < float("inf"),
             f"noise_scale must be >= 0, got {self.noise_scale}"),
        ]

    def __post_init__(self) -> None:
        if self.method == "meanflow":
            object.__setattr__(self, "channels_last", False)
        super().__post_init__()
        if self.arch == "lean":
            self.lean_config(1, 1)  # its MedShiftError now, before any work

    def lean_config(self, in_channels: int, num_classes: int) -> LeanConfig:
        """The lean network of these settings (``arch == "lean"``)."""
        return LeanConfig(in_channels=in_channels, num_classes=num_classes,
                          unshuffle=self.lean_unshuffle, widths=self.lean_widths,
                          blocks=self.lean_blocks, kernel=self.lean_kernel,
                          block=self.lean_block, noise_channels=self.noise_channels)

    def teacher_settings(self) -> dict[str, Any]:
        """The teacher's translation settings (None fields: the TranslationSettings defaults)."""
        return {"guidance_encode": RECIPE["guidance_encode"] if self.guidance_encode is None
                else float(self.guidance_encode),
                "guidance_decode": RECIPE["guidance_decode"] if self.guidance_decode is None
                else float(self.guidance_decode),
                "solver": self.solver or RECIPE["solver"],
                "steps": int(self.solver_steps or RECIPE["steps"])}

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> DistillConfig:
        return super().from_dict(d, strict)
