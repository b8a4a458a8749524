"""``medshift train-autoencoder``: the small KL autoencoder used by latent-mode training.

Trained by the shared loop (``train.trainer``: resume, non-finite guard, DDP, EMA, progress,
checkpoints). RUN_AE/ holds config.json (architecture, training config, latent scale, metrics)
and autoencoder.safetensors (``models.codec.save_autoencoder``), training_state.pt (resume) and
log.csv. The latent scale is 1 / std of the posterior means over the training images (the role
of SD-VAE's 0.18215), so latents fed to the flow have unit variance; it is written when training
ends (a run without it is "unfinished" and refused by ``load_autoencoder``). Reconstruction
quality is reported as PSNR (data range 2 for images in [-1, 1]) on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..fileio import atomic_write
from ..models.autoencoder import AutoencoderConfig, KLAutoencoder, kl_divergence
from ..models.codec import load_autoencoder, save_autoencoder
from ..run import STATE
from .data import IndexStream, MemorySource, check_dataset, open_split, pick_balanced
from .trainer import Task, Trainer, run_training

__all__ = ["AutoencoderTrainConfig", "load_autoencoder", "psnr", "reconstruct",
           "train_autoencoder"]

# Fields that may change on --resume (they do not change the model or the math of a step).
_RESUMABLE = frozenset({"data", "out", "steps", "device", "precision", "log_every", "ckpt_every",
                        "keep_ckpts", "val_every", "val_images", "tensorboard", "resume",
                        "max_nonfinite", "skip_bad", "overwrite", "compile", "channels_last"})


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Training of the KL autoencoder (``medshift train-autoencoder``).

    Attributes:
        data: dataset root (ROOT/<domain>/*.png|tif|dcm [+ manifest.csv]).
        out: autoencoder run directory.
        image_size: training resolution in pixels.
        domains: comma-separated domain names to train on (default: all).
        domain_map: FOLDER=DOMAIN,... renames/merges dataset folders into domains.
        skip_bad: log and skip unreadable image files instead of stopping.
        resize: crop | pad: how non-square images are fitted to image_size.
        latent_channels: latent channels z_c.
        channels: base width.
        channel_mult: width multiplier per level (downsampling factor 2^(levels - 1)).
        num_res_blocks: residual blocks per level.
        steps: optimizer steps.
        batch_size: images per optimizer step (over all processes and accumulation steps).
        grad_accum: gradient accumulation micro-steps per optimizer step.
        lr: AdamW learning rate (one-cycle cosine schedule).
        weight_decay: AdamW weight decay.
        warmup_frac: fraction of the steps spent warming the learning rate up.
        grad_clip: gradient-norm clip (<= 0: off).
        kl_weight: weight of the KL term (small: the latent stays informative).
        ema_decay: EMA decay of the saved weights (0: the raw weights).
        seed: RNG seed.
        precision: auto (bf16 autocast on CUDA) | fp32 | bf16.
        channels_last: channels_last weights and inputs.
        compile: torch.compile the model.
        max_nonfinite: stop after this many non-finite steps in a row.
        log_every: log.csv / progress interval in steps.
        ckpt_every: checkpoint interval in steps.
        keep_ckpts: step checkpoints kept (0: all).
        val_every: validation L1 every N steps, best kept in RUN_AE/best (0: off).
        val_images: validation images for the reconstruction PSNR.
        tensorboard: also log to RUN_AE/tb.
        resume: continue exactly: "last" (the run in out) or a checkpoint folder.
        overwrite: replace an existing run in out.
        device: auto | cpu | cuda | cuda:N.
    """

    data: str = ""
    out: str = "runs/autoencoder"
    image_size: int = 32
    domains: tuple[str, ...] | None = None
    domain_map: str | None = None
    skip_bad: bool = False
    resize: str = "crop"
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    steps: int = 2000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    kl_weight: float = 1e-6
    ema_decay: float = 0.0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    max_nonfinite: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 1
    val_every: int = 0
    val_images: int = 64
    tensorboard: bool = False
    resume: str | None = None
    overwrite: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        f = 2 ** (len(self.channel_mult) - 1)
        checks = [
            (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1"),
            (self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             "batch_size must be a multiple of grad_accum >= 1"),
            (self.lr > 0 and self.kl_weight >= 0, "lr must be > 0 and kl_weight >= 0"),
            (0.0 <= self.warmup_frac < 1.0 and 0.0 <= self.ema_decay < 1.0,
             "warmup_frac and ema_decay must be in [0, 1)"),
            (self.image_size >= 8 and self.image_size % f == 0,
             f"image_size must be >= 8 and divisible by the downsampling factor {f}"),
            (self.resize in ("crop", "pad"), f"resize must be crop or pad, got {self.resize!r}"),
            (self.log_every >= 1 and self.ckpt_every >= 1 and self.val_images >= 1,
             "log_every, ckpt_every and val_images must be >= 1"),
            (self.max_nonfinite >= 1 and self.keep_ckpts >= 0 and self.val_every >= 0,
             "max_nonfinite must be >= 1, keep_ckpts and val_every >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MedShiftError(f"AutoencoderTrainConfig: {msg}")

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum

    def model_config(self) -> AutoencoderConfig:
        return AutoencoderConfig(1, self.latent_channels, self.channels, self.channel_mult,
                                 self.num_res_blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderTrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (data range 2), over the whole batch."""
    mse = F.mse_loss(x.float().clamp(-1, 1), ref.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruct(model: KLAutoencoder, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Decode the posterior mean of every image: (N, C, H, W) -> (N, C, H, W)."""
    dev = next(model.parameters()).device
    outs = [model.decode(model.encode(x[k:k + batch].to(dev))[0]).cpu()
            for k in range(0, x.shape[0], batch)]
    return torch.cat(outs)


@torch.no_grad()
def latent_scale(model: KLAutoencoder, x: torch.Tensor, batch: int = 64) -> float:
    dev = next(model.parameters()).device
    zs = torch.cat([model.encode(x[k:k + batch].to(dev))[0].float().cpu()
                    for k in range(0, min(x.shape[0], 256), batch)])
    return float(1.0 / zs.std().clamp_min(1e-6))


class AutoencoderTask(Task):
    """L1 reconstruction of a posterior sample + kl_weight * KL(q(z|x) || N(0, I))."""

    desc = "train-autoencoder"

    def __init__(self, cfg: AutoencoderTrainConfig, data=None) -> None:
        self.cfg, self._data = cfg, data
        self.result: dict[str, Any] = {}

    def setup(self, tr: Trainer) -> None:
        cfg = self.cfg
        if self._data is not None:
            x, xv = self._data
        else:
            check_dataset(cfg)
            ds = open_split(cfg, "train")
            x, y = ds.to_tensors()
            va = open_split(cfg, "val", ds.domains)
            if va is not None:
                xv, yv = va.to_tensors()
            else:
                xv, yv = x, y
            xv = xv[pick_balanced(yv, cfg.val_images)]
        if x.dim() != 4 or x.shape[0] == 0:
            raise MedShiftError(f"autoencoder training data must be (N, 1, S, S), got "
                                f"{tuple(x.shape)}")
        self.x, self.xv = x.float(), xv.float()
        labels = torch.zeros(x.shape[0], dtype=torch.long)
        self.source = MemorySource(self.x, labels, IndexStream(x.shape[0], cfg.micro_batch,
                                                               cfg.seed), tr.dist)

    def build_model(self, tr: Trainer) -> KLAutoencoder:
        return KLAutoencoder(self.cfg.model_config())

    def batch(self, tr: Trainer, m: int):
        return self.source.batch(m)[0]

    def loss(self, tr: Trainer, fwd, xb) -> torch.Tensor:
        if self.cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            rec, mean, logvar = fwd(xb, generator=tr.gen)
        l1 = (rec.float() - xb).abs().mean()
        return l1 + self.cfg.kl_weight * kl_divergence(mean.float(), logvar.float())

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        rec = reconstruct(tr.ema.module, self.xv)
        return float((rec.float() - self.xv).abs().mean())

    def _meta(self, tr: Trainer, scale=None, metrics=None) -> dict[str, Any]:
        return {"train": self.cfg.to_dict(), "step": tr.step, "latent_scale": scale,
                "metrics": metrics or {}}

    def save(self, tr: Trainer, run_dir: Path) -> None:
        save_autoencoder(run_dir, tr.ema.module, self._meta(tr, self.result.get("latent_scale"),
                                                             self.result.get("metrics")))
        state = tr.training_state()
        atomic_write(run_dir / STATE, lambda p: torch.save(state, p))

    def check_resume(self, tr: Trainer, src: Path) -> None:
        import json

        saved = json.loads((src / "config.json").read_text()).get("train", {})
        now = self.cfg.to_dict()
        for k, v in now.items():
            if k in _RESUMABLE or k not in saved:
                continue
            if (tuple(saved[k]) if isinstance(saved[k], list) else saved[k]) != v:
                raise MedShiftError(f"cannot resume: the checkpoint was trained with {k}="
                                    f"{saved[k]!r} but this run asks for {k}={v!r}")

    def finish(self, tr: Trainer, out: Path) -> None:
        model = tr.ema.module.eval()
        scale = latent_scale(model, self.x)
        val_psnr = psnr(reconstruct(model, self.xv), self.xv)
        metrics = {"val_psnr": val_psnr, "val_images": int(self.xv.shape[0])}
        self.result = {"latent_scale": scale, "metrics": metrics}
        self.save(tr, out)
        self.result.update(out=out, val_psnr=val_psnr, val_images=int(self.xv.shape[0]))


def train_autoencoder(cfg: AutoencoderTrainConfig, progress: bool = True,
                      data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train the autoencoder and write RUN_AE; returns {"out", "val_psnr", "latent_scale", ...}.

    Args:
        data: optional (x_train (N, 1, S, S), x_val (M, 1, S, S)) instead of reading cfg.data.
    """
    from .flow import check_fresh_out

    check_fresh_out(cfg)
    task = AutoencoderTask(cfg, data)
    run_training(cfg, task, progress)
    res = dict(task.result)
    res.pop("metrics", None)
    return res

