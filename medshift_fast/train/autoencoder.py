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
from dataclasses import dataclass
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
from .loop_config import LoopConfig, resume_check
from .trainer import Task, Trainer, run_training

__all__ = ["AutoencoderTrainConfig", "load_autoencoder", "psnr", "reconstruct",
           "train_autoencoder"]

# Fields that may change on --resume (they do not change the model or the math of a step).
_RESUMABLE = frozenset({"data", "out", "steps", "device", "precision", "log_every", "ckpt_every",
                        "keep_ckpts", "val_every", "val_images", "tensorboard", "resume",
                        "max_nonfinite", "skip_bad", "overwrite", "compile", "channels_last"})


@dataclass(frozen=True, kw_only=True)
class AutoencoderTrainConfig(LoopConfig):
    """Training of the KL autoencoder (``medshift train-autoencoder``; loop fields:
    ``LoopConfig``).

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
        kl_weight: weight of the KL term (small: the latent stays informative).
        val_every: validation L1 every N steps, best kept in RUN_AE/best (0: off).
        val_images: validation images for the reconstruction PSNR.
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
    warmup_frac: float = 0.05
    kl_weight: float = 1e-6
    ema_decay: float = 0.0
    channels_last: bool = False
    keep_ckpts: int = 1
    val_every: int = 0
    val_images: int = 64

    def checks(self) -> list[tuple[bool, str]]:
        """The (condition, message) pairs ``__post_init__`` enforces."""
        f = 2 ** (len(self.channel_mult) - 1)
        return super().checks() + [
            (self.kl_weight >= 0, "kl_weight must be >= 0"),
            (self.image_size >= 8 and self.image_size % f == 0,
             f"image_size must be >= 8 and divisible by the downsampling factor {f}"),
            (self.resize in ("crop", "pad"), f"resize must be crop or pad, got {self.resize!r}"),
            (self.val_images >= 1, "val_images must be >= 1"),
        ]

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        super().__post_init__()

    def model_config(self) -> AutoencoderConfig:
        """The ``AutoencoderConfig`` these settings describe."""
        return AutoencoderConfig(1, self.latent_channels, self.channels, self.channel_mult,
                                 self.num_res_blocks)

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> AutoencoderTrainConfig:
        """The config of a saved dict (unknown keys ignored unless ``strict``)."""
        return super().from_dict(d, strict)


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
    """1 / std of the latent means of up to 256 images (the SD-VAE-style scale factor)."""
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
        """Task hook: open the training and validation images (vetted)."""
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
        """Task hook: a fresh KL autoencoder of the configured size."""
        return KLAutoencoder(self.cfg.model_config())

    def batch(self, tr: Trainer, m: int):
        """Task hook: micro-batch ``m`` of training images."""
        return self.source.batch(m)[0]

    def loss(self, tr: Trainer, fwd, xb) -> torch.Tensor:
        """Task hook: L1 reconstruction plus the weighted KL term."""
        if self.cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            rec, mean, logvar = fwd(xb, generator=tr.gen)
        l1 = (rec.float() - xb).abs().mean()
        return l1 + self.cfg.kl_weight * kl_divergence(mean.float(), logvar.float())

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        """Task hook: mean L1 reconstruction error of the EMA model on the validation images."""
        rec = reconstruct(tr.ema.module, self.xv)
        return float((rec.float() - self.xv).abs().mean())

    def _meta(self, tr: Trainer, scale=None, metrics=None) -> dict[str, Any]:
        return {"train": self.cfg.to_dict(), "step": tr.step, "latent_scale": scale,
                "metrics": metrics or {}}

    def save(self, tr: Trainer, run_dir: Path) -> None:
        """Task hook: the autoencoder run (weights, config) and the training state."""
        save_autoencoder(run_dir, tr.ema.module, self._meta(tr, self.result.get("latent_scale"),
                                                             self.result.get("metrics")))
        state = tr.training_state()
        atomic_write(run_dir / STATE, lambda p: torch.save(state, p))

    def check_resume(self, tr: Trainer, src: Path) -> None:
        """Task hook: refuse to resume a run trained with incompatible settings."""
        import json

        saved = json.loads((src / "config.json").read_text()).get("train", {})
        resume_check(saved, self.cfg, _RESUMABLE)

    def finish(self, tr: Trainer, out: Path) -> None:
        """Task hook: measure the latent scale and validation PSNR, then save the final run."""
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

