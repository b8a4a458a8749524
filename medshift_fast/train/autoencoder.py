"""``medshift train-autoencoder``: train the small KL autoencoder used by latent-mode training.

RUN_AE/ holds config.json (architecture, training config, latent scale, metrics) and
autoencoder.safetensors, written atomically (every ``ckpt_every`` steps and at the end), plus
log.csv. The latent scale is 1 / std of the posterior means over the training images (the role
of SD-VAE's 0.18215), so latents fed to the flow have unit variance. Reconstruction quality is
reported as PSNR (data range 2 for images in [-1, 1]) on the validation split.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .. import __version__
from ..errors import MedShiftError
from ..models.autoencoder import AutoencoderConfig, KLAutoencoder, kl_divergence
from . import checkpoint as ckpt
from .data import IndexStream, pick_balanced

AE_FORMAT = "medshift_fast_autoencoder"
AE_WEIGHTS = "autoencoder.safetensors"


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Training of the KL autoencoder.

    Attributes:
        data, out, image_size, domains: as in TrainConfig.
        latent_channels, channels, channel_mult, num_res_blocks: architecture
            (downsampling factor 2^(len(channel_mult) - 1)).
        steps, batch_size, lr, grad_clip: AdamW with warm-up + cosine decay.
        kl_weight: weight of the KL term (small: the latent stays informative).
        seed, device, precision: as in TrainConfig.
        log_every, ckpt_every: intervals in steps.
        val_images: images used for the reconstruction PSNR.
    """

    data: str = ""
    out: str = "runs/autoencoder"
    image_size: int = 32
    domains: tuple[str, ...] | None = None
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    grad_clip: float = 1.0
    kl_weight: float = 1e-6
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    log_every: int = 10
    ckpt_every: int = 500
    val_images: int = 64

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        f = 2 ** (len(self.channel_mult) - 1)
        checks = [
            (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1"),
            (self.lr > 0 and self.kl_weight >= 0, "lr must be > 0 and kl_weight >= 0"),
            (self.image_size >= 8 and self.image_size % f == 0,
             f"image_size must be >= 8 and divisible by the downsampling factor {f}"),
            (self.log_every >= 1 and self.ckpt_every >= 1 and self.val_images >= 1,
             "log_every, ckpt_every and val_images must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MedShiftError(f"AutoencoderTrainConfig: {msg}")

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


def _load_images(cfg: AutoencoderTrainConfig):
    from .data import open_split

    tr = open_split(cfg, "train")
    x, y = tr.to_tensors()
    va = open_split(cfg, "val", tr.domains)
    if va is not None:
        xv, yv = va.to_tensors()
    else:
        xv, yv = x, y
    keep = pick_balanced(yv, cfg.val_images)
    return x, y, xv[keep]


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


def _save(out: Path, cfg: AutoencoderTrainConfig, model: KLAutoencoder, step: int,
          scale: float | None, metrics: dict[str, float]) -> None:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt.atomic_write(out / AE_WEIGHTS, lambda p: save_file(sd, p, metadata={"step": str(step)}))
    meta = {"format": AE_FORMAT, "format_version": 1, "medshift_fast_version": __version__,
            "model": model.config.to_dict(), "train": cfg.to_dict(), "step": step,
            "latent_scale": scale, "metrics": metrics}
    ckpt.atomic_write_text(out / ckpt.CONFIG, json.dumps(meta, indent=2, sort_keys=True))


def train_autoencoder(cfg: AutoencoderTrainConfig, progress: bool = True,
                      data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train the autoencoder and write RUN_AE; returns {"out", "val_psnr", "latent_scale", ...}.

    Args:
        data: optional (x_train (N, 1, S, S), x_val (M, 1, S, S)) instead of reading cfg.data.
    """
    from tqdm.auto import tqdm

    from .loop import autocast_ctx, resolve_device

    dev = resolve_device(cfg.device)
    if data is not None:
        x, xv = data
        y = torch.zeros(x.shape[0], dtype=torch.long)
    else:
        x, y, xv = _load_images(cfg)
    torch.manual_seed(cfg.seed)
    model = KLAutoencoder(cfg.model_config()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1.0 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = IndexStream(x.shape[0], cfg.batch_size, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, n0 = time.perf_counter(), 0
    with open(out / "log.csv", "w", newline="") as fh, tqdm(
            total=cfg.steps, disable=not progress, desc="train-autoencoder") as bar:
        wr = csv.writer(fh)
        wr.writerow(["step", "loss", "l1", "kl", "lr", "img_per_s"])
        for step in range(1, cfg.steps + 1):
            xb = x[stream.global_batch(step - 1)].to(dev)
            model.train()
            with autocast_ctx(cfg.precision, dev):
                rec, mean, logvar = model(xb, generator=gen)
            l1 = (rec.float() - xb).abs().mean()
            kl = kl_divergence(mean.float(), logvar.float())
            loss = l1 + cfg.kl_weight * kl
            if not torch.isfinite(loss):
                raise MedShiftError(f"autoencoder training diverged at step {step} (loss "
                                    f"{loss.item()}); lower --lr or check the data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            bar.update(1)
            n0 += xb.shape[0]
            if step % cfg.log_every == 0 or step == cfg.steps:
                ips = n0 / max(time.perf_counter() - t0, 1e-9)
                t0, n0 = time.perf_counter(), 0
                lr = sched.get_last_lr()[0]
                wr.writerow([step, f"{loss.item():.6f}", f"{l1.item():.6f}", f"{kl.item():.3f}",
                             f"{lr:.3e}", f"{ips:.1f}"])
                fh.flush()
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{ips:.0f}")
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                _save(out, cfg, model, step, None, {})
    model.eval()
    scale = latent_scale(model, x)
    val_psnr = psnr(reconstruct(model, xv), xv)
    metrics = {"val_psnr": val_psnr, "val_images": int(xv.shape[0])}
    _save(out, cfg, model, cfg.steps, scale, metrics)
    del y
    return {"out": out, "latent_scale": scale, **metrics}


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[KLAutoencoder, dict[str, Any]]:
    """Load RUN_AE (eval mode) and its config.json (with ``latent_scale``)."""
    path = Path(path)
    cfg_path = path / ckpt.CONFIG
    if not cfg_path.is_file():
        raise MedShiftError(f"{path} is not an autoencoder run (no {ckpt.CONFIG}); train one with "
                            "`medshift train-autoencoder --data DIR --out RUN_AE`")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedShiftError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if meta.get("format") != AE_FORMAT:
        raise MedShiftError(f"{path} is not a medshift_fast autoencoder run (format "
                            f"{meta.get('format')!r}); pass a folder written by "
                            "`medshift train-autoencoder`")
    if meta.get("latent_scale") is None:
        raise MedShiftError(f"autoencoder run {path} is unfinished (no latent scale yet); let "
                            "`medshift train-autoencoder` finish")
    model = KLAutoencoder(AutoencoderConfig(**meta["model"]))
    sd = ckpt.load_weights(path / AE_WEIGHTS)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise MedShiftError(f"autoencoder weights in {path} do not match its config "
                            f"({str(exc).splitlines()[0]})") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), meta
