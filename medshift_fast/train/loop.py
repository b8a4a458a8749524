"""The training loop: class-conditional SB flow matching with AdamW + one-cycle cosine + EMA.

One optimizer step: draw a minibatch (x_1, y) -> matcher (noise, OT/SB coupling, t, x_t, u_t,
label dropout) -> loss = ||v(x_t, t, y) - u_t||^2 -> clip -> AdamW -> schedule -> EMA.
All randomness comes from one torch.Generator whose state is checkpointed.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..flow.coupling import CouplingConfig
from ..flow.matcher import SBFlowMatcher
from ..models.ema import EMA
from ..models.unet import UNet, count_parameters, preset_config
from . import checkpoint as ckpt
from .config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedShiftError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
    return dev


def autocast_ctx(precision: str, device: torch.device):
    """bf16 autocast on CUDA by default; fp32 on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """One-cycle: linear warm-up over warmup_frac of the steps, then cosine decay to ~0."""
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps))) if cfg.warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, cfg.steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def load_training_data(cfg: TrainConfig):
    """(images (N, C, S, S) fp32 in [-1, 1], labels (N,), domains) of the training split."""
    from ..data import FolderDataset

    if not cfg.data:
        raise MedShiftError("no training data: pass --data ROOT (or run `medshift simulate`)")
    ds = FolderDataset(cfg.data, size=cfg.image_size, split="train", domains=cfg.domains)
    x, y = ds.to_tensors()
    return x, y, tuple(ds.domains)


class Trainer:
    """Holds model, EMA, optimizer, schedule, generator and the data for one run."""

    def __init__(self, cfg: TrainConfig, data: tuple[torch.Tensor, torch.Tensor, tuple] | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        x, y, domains = data if data is not None else load_training_data(cfg)
        if x.dim() != 4 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise MedShiftError(f"training data must be (N, C, H, W) with N labels, got "
                                f"{tuple(x.shape)} / {tuple(y.shape)}")
        self.x, self.y, self.domains = x, y.long(), tuple(domains)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model_cfg = preset_config(cfg.preset, in_channels=x.shape[1],
                                       num_classes=len(self.domains), image_size=cfg.image_size)
        self.model = UNet(self.model_cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        self.sched = make_scheduler(self.opt, cfg)
        self.matcher = SBFlowMatcher(
            len(self.domains),
            CouplingConfig(method=cfg.coupling, sigma=cfg.sigma, eps_relative=cfg.eps_relative,
                           sampling=cfg.plan_sampling),
            p_uncond=cfg.p_uncond,
        )
        self.step = 0
        self.n_nonfinite = 0

    # ------------------------------------------------------------------------------- one step
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.x.shape[0], (self.cfg.batch_size,), generator=self.gen)
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def train_step(self) -> dict[str, float]:
        x1, y = self.batch()
        fb = self.matcher(x1, y, generator=self.gen)
        xt = fb.x_t
        if self.cfg.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with autocast_ctx(self.cfg.precision, self.device):
            v = self.model(xt, fb.t, fb.y)
        loss = F.mse_loss(v.float(), fb.u_t.float())
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.n_nonfinite += 1
            return {"loss": float("nan"), "grad_norm": float("nan"), "skipped": 1.0}
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(gn):
            self.n_nonfinite += 1
            self.opt.zero_grad(set_to_none=True)
            return {"loss": float(loss), "grad_norm": float("nan"), "skipped": 1.0}
        self.n_nonfinite = 0
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": loss.item(), "grad_norm": gn.item(), "skipped": 0.0}

    # ---------------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        return {
            "step": torch.tensor(self.step),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, run_dir: str | Path | None = None) -> Path:
        return ckpt.save_run(run_dir or self.cfg.out, self.cfg, self.model_cfg, self.domains,
                             self.ema.state_dict(), self.model.state_dict(), self.training_state(),
                             extra={"step": self.step})

    def load_state(self, run_dir: str | Path) -> None:
        """Resume from a run directory written by this Trainer's config."""
        cfg = ckpt.read_run_config(run_dir)
        self.model.load_state_dict(ckpt.load_weights(Path(run_dir) / ckpt.RAW_WEIGHTS))
        self.ema.load_state_dict(ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS))
        st = ckpt.load_training_state(run_dir)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        self.step = int(st["step"])
        del cfg


def train(cfg: TrainConfig, progress: bool = True, data=None) -> Path:
    """Train a run to ``cfg.steps`` and write the run directory ``cfg.out``; returns its path."""
    from tqdm.auto import tqdm

    tr = Trainer(cfg, data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / "train_config.json", cfg.to_json())
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    t_last, n_last = time.perf_counter(), 0
    with open(log_path, "a", newline="") as fh, tqdm(
        total=cfg.steps, disable=not progress, desc="train", dynamic_ncols=True
    ) as bar:
        wr = csv.writer(fh)
        if new_log:
            wr.writerow(["step", "loss", "lr", "grad_norm", "img_per_s"])
        bar.set_description(f"train {cfg.preset} ({count_parameters(tr.model) / 1e6:.2f} M)")
        while tr.step < cfg.steps:
            lr = tr.opt.param_groups[0]["lr"]
            m = tr.train_step()
            if m["skipped"]:
                if tr.n_nonfinite >= 20:
                    tr.save(out)
                    raise MedShiftError(
                        f"training diverged: {tr.n_nonfinite} non-finite steps in a row at step "
                        f"{tr.step}; lower --lr or check the data for NaN/Inf")
                continue
            bar.update(1)
            n_last += cfg.batch_size
            if tr.step % cfg.log_every == 0 or tr.step == cfg.steps:
                now = time.perf_counter()
                ips = n_last / max(now - t_last, 1e-9)
                t_last, n_last = now, 0
                wr.writerow([tr.step, f"{m['loss']:.6f}", f"{lr:.3e}", f"{m['grad_norm']:.4f}",
                             f"{ips:.1f}"])
                fh.flush()
                bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
            if tr.step % cfg.ckpt_every == 0 and tr.step < cfg.steps:
                tr.save(out)
    tr.save(out)
    return out
