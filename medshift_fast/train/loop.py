"""The training loop: class-conditional SB flow matching with AdamW + one-cycle cosine + EMA.

One optimizer step = ``grad_accum`` micro-steps; a micro-step draws this rank's share of a global
micro-batch (x_1, y) -> ``distributed.global_flow_batch`` (noise, ONE OT/SB coupling over all
ranks, t, x_t, u_t, label dropout) -> loss = ||v(x_t, t, y) - u_t||^2 -> backward (DDP averages
over ranks). Then: clip, non-finite guard (skip + count, stop after ``max_nonfinite`` in a row),
AdamW, schedule, EMA. All randomness comes from generators whose states are checkpointed, and the
data order is a function of the micro-batch counter, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import write_png16
from ..errors import MedShiftError
from ..flow.coupling import CouplingConfig
from ..flow.matcher import SBFlowMatcher
from ..models.ema import EMA
from ..models.unet import UNet, UNetConfig, count_parameters, preset_config
from . import checkpoint as ckpt
from . import data as D
from .config import TrainConfig
from .distributed import (
    DistInfo,
    all_reduce_sum,
    global_flow_batch,
    init_from_env,
    no_sync,
    shutdown,
)
from .latent import codec_for_training, copy_autoencoder
from .progress import RunLogger, sample_grid

log = logging.getLogger("medshift_fast.train")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was written before stopping."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedShiftError(f"device {name!r} requested but no CUDA GPU is visible; use "
                            "--device cpu")
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
    ds = D.open_split(cfg, "train")
    x, y = ds.to_tensors()
    return x, y, tuple(ds.domains)


class Trainer:
    """Model, EMA, optimizer, schedule, generators and data of one run (one rank of it).

    Args:
        cfg: the run configuration.
        data: optional (x (N, 1, S, S) pixels in [-1, 1], y (N,), domains) instead of cfg.data.
        val_data: optional (x, y) validation images (default: the val split, or a fixed subset
            of the training images when there is none).
        dist_info: process group (default: one process on cfg.device).
    """

    def __init__(self, cfg: TrainConfig, data=None, val_data=None,
                 dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = info = dist_info or DistInfo(device=resolve_device(cfg.device))
        self.device = dev = info.device
        if cfg.micro_batch % info.world:
            raise MedShiftError(f"batch_size / grad_accum = {cfg.micro_batch} images per "
                                f"micro-step must be divisible by the {info.world} processes")
        self.local_batch = cfg.micro_batch // info.world
        torch.manual_seed(cfg.seed)
        self.codec = codec_for_training(cfg, dev)
        td = D.prepare_data(cfg, self.codec, info, data, val_data)
        self.domains, self.stream, self._dataset = td.domains, td.stream, td.dataset
        self.data_mode, self.x, self.y = td.mode, td.x, td.y
        self.val_pixels, self.val_y, self.val_x = td.val_pixels, td.val_y, td.val_x
        self._source = (D.MemorySource(td.x, td.y, td.stream, info) if td.mode == "memory"
                        else None)
        c, s = td.val_x.shape[1], td.val_x.shape[-1]
        self.model_cfg = self._model_config(c, s)
        self.model = UNet(self.model_cfg).to(dev)
        if s % self.model.down_factor:
            raise MedShiftError(f"model-space size {s} must be divisible by "
                                f"{self.model.down_factor}; change --image-size")
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_decay)
        # The fused AdamW kernel (one pass over every parameter, CPU and CUDA) instead of the
        # per-parameter loop: ~6 % of a tiny-preset CPU step went to Adam's small ops.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                     fused=dev.type in ("cpu", "cuda"))
        self.sched = make_scheduler(self.opt, cfg)
        self.matcher = SBFlowMatcher(
            len(self.domains),
            CouplingConfig(method=cfg.coupling, sigma=cfg.sigma, eps_relative=cfg.eps_relative,
                           sampling=cfg.plan_sampling),
            p_uncond=cfg.p_uncond,
        )
        self.ddp = None
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.fwd = self.ddp or self.model
        if cfg.compile:
            self.fwd = torch.compile(self.fwd, dynamic=False)  # fixed training shapes
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = (self.gen if dev.type == "cpu"
                          else torch.Generator(dev).manual_seed(cfg.seed + 1))
        self.step = 0
        self.micro = 0
        self.n_nonfinite = 0
        self.n_skipped = 0
        self.best_val = math.inf
        self.stop_requested = False
        self._stop_local = False

    # ------------------------------------------------------------------------------- set-up
    def _model_config(self, channels: int, size: int) -> UNetConfig:
        over = {"model_channels": self.cfg.model_channels} if self.cfg.model_channels else {}
        return preset_config(self.cfg.preset, in_channels=channels,
                             num_classes=len(self.domains), image_size=size, **over)

    @property
    def source(self):
        if self._source is None:  # streaming: start the workers at the current micro-batch
            enc = self.codec.encode if self.codec.kind != "pixel" else None
            self._source = D.StreamSource(self._dataset, self.stream, self.dist,
                                          self.cfg.num_workers, self.micro, enc)
        return self._source

    # ------------------------------------------------------------------------------- one step
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch (x_1 in model space, y) on the device."""
        xb, yb = self.source.batch(self.micro)
        self.micro += 1
        return xb, yb

    def request_stop(self, *_: Any) -> None:
        """Ask the loop to checkpoint and stop after the current step (signal handler)."""
        self._stop_local = True

    def should_stop(self) -> bool:
        return self.stop_requested or (not self.dist.enabled and self._stop_local)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (grad_accum micro-steps); returns loss, grad_norm, lr, skipped."""
        cfg, dev = self.cfg, self.device
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        lr = self.opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=dev)
        for a in range(cfg.grad_accum):
            x1, y = self.batch()
            fb = global_flow_batch(x1, y, self.matcher.coupling, len(self.domains),
                                   cfg.p_uncond, self.gen, self.dist, self.noise_gen)
            xt = fb.x_t
            if cfg.channels_last:
                xt = xt.contiguous(memory_format=torch.channels_last)
            with no_sync(self.ddp, a < cfg.grad_accum - 1):
                with autocast_ctx(cfg.precision, dev):
                    v = self.fwd(xt, fb.t, fb.y)
                loss = F.mse_loss(v.float(), fb.u_t.float())
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        loss_mean = loss_sum / cfg.grad_accum
        bad = (~torch.isfinite(loss_mean)) | (~torch.isfinite(gn.to(dev)))
        stats = torch.stack([torch.nan_to_num(loss_mean, nan=0.0, posinf=0.0, neginf=0.0),
                             bad.float(), torch.tensor(float(self._stop_local), device=dev)])
        stats = all_reduce_sum(stats, self.dist).tolist()  # one collective, one host sync
        self.stop_requested = stats[2] > 0
        if stats[1] > 0:
            self.opt.zero_grad(set_to_none=True)
            self.n_nonfinite += 1
            self.n_skipped += 1
            return {"loss": float("nan"), "grad_norm": float("nan"), "lr": lr, "skipped": 1.0}
        self.n_nonfinite = 0
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": stats[0] / self.dist.world, "grad_norm": float(gn), "lr": lr,
                "skipped": 0.0}

    @torch.no_grad()
    def validate(self) -> float:
        """Flow-matching loss of the EMA model on the validation images, fixed generator."""
        cfg, dev = self.cfg, self.device
        g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        one = DistInfo(device=dev)
        total, n = 0.0, 0
        for k in range(0, self.val_x.shape[0], cfg.micro_batch):
            xb = self.val_x[k:k + cfg.micro_batch].to(dev)
            fb = global_flow_batch(xb, self.val_y[k:k + cfg.micro_batch], self.matcher.coupling,
                                   len(self.domains), 0.0, g, one)
            with autocast_ctx(cfg.precision, dev):
                v = self.ema.module(fb.x_t, fb.t, fb.y)
            total += F.mse_loss(v.float(), fb.u_t.float(), reduction="sum").item()
            n += fb.u_t.numel()
        return total / max(n, 1)

    # ---------------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        st = {
            "step": self.step,
            "micro": self.micro,
            "n_skipped": self.n_skipped,
            "best_val": self.best_val,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
        }
        if self.noise_gen is not self.gen:
            st["noise_generator"] = self.noise_gen.get_state()
        if self.device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return st

    def _save_args(self):
        extra = {"step": self.step, "latent": self.codec.reference(), "n_skipped": self.n_skipped,
                 "best_val": None if math.isinf(self.best_val) else self.best_val}
        return (self.cfg, self.model_cfg, self.domains, self.ema.state_dict(),
                self.model.state_dict(), self.training_state()), {"extra": extra}

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write the last checkpoint into the run directory (file by file, each atomic)."""
        args, kw = self._save_args()
        return ckpt.save_run(run_dir or self.cfg.out, *args, **kw)

    def save_dir(self, run_dir: str | Path) -> Path:
        """Write a complete checkpoint folder atomically (temporary folder + rename)."""
        args, kw = self._save_args()
        return ckpt.save_run_atomic_dir(run_dir, *args, **kw)

    def load_state(self, run_dir: str | Path) -> Path:
        """Resume from a checkpoint folder; refuses one whose config is incompatible."""
        src = ckpt.resolve_resume(run_dir)
        ckpt.check_compatible(src, self.cfg, self.model_cfg, self.domains, self.codec.kind)
        st = ckpt.load_training_state(src)
        model_sd = st.get("model") or ckpt.load_weights(src / ckpt.RAW_WEIGHTS)
        ema_sd = st.get("ema") or ckpt.load_weights(src / ckpt.WEIGHTS)
        self.model.load_state_dict(model_sd)
        self.ema.load_state_dict(ema_sd)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"])
        if "noise_generator" in st and self.noise_gen is not self.gen:
            self.noise_gen.set_state(st["noise_generator"])
        torch.set_rng_state(st["torch_rng"])
        if "cuda_rng" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], self.device)
        self.step = int(st["step"])
        self.micro = int(st.get("micro", self.step * self.cfg.grad_accum))
        self.n_skipped = int(st.get("n_skipped", 0))
        self.best_val = float(st.get("best_val", math.inf))
        return src


@contextlib.contextmanager
def _stop_on_signals(tr: Trainer):
    """SIGINT/SIGTERM -> checkpoint + stop after the current step; a second one acts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}

    def handler(signum, frame):
        tr.request_stop()
        for s in sigs:
            signal.signal(s, old[s])

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, old[s])


def train(cfg: TrainConfig, progress: bool = True, data=None, val_data=None,
          on_step: Callable[[Trainer, dict], None] | None = None) -> Path:
    """Train a run to ``cfg.steps`` and write the run directory ``cfg.out``; returns its path.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes logs and checkpoints.

    Args:
        cfg: run configuration (``cfg.resume`` continues a checkpoint exactly).
        progress: show a progress bar.
        data, val_data: optional in-memory data (see :class:`Trainer`).
        on_step: called as ``on_step(trainer, metrics)`` after every optimizer step.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is written.
        MedShiftError: bad input, incompatible resume, or ``max_nonfinite`` bad steps in a row.
    """
    info = init_from_env(cfg.device)
    logger = None
    ok = False
    try:
        tr = Trainer(cfg, data, val_data, dist_info=info)
        main = info.is_main
        out = Path(cfg.out)
        if cfg.resume:
            src = tr.load_state(out if cfg.resume == "last" else cfg.resume)
            if main:
                log.info("resumed from %s at step %d", src, tr.step)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(out / "train_config.json", cfg.to_json())
            copy_autoencoder(tr.codec, out)
        logger = RunLogger(out, cfg, tr.step, main, progress)
        logger.bar.set_description(
            f"train {cfg.preset} ({count_parameters(tr.model) / 1e6:.2f} M, {info.world} proc)")
        _loop(tr, cfg, out, logger, on_step)
        if main:
            tr.save(out)
        ok = True
    finally:
        if logger is not None:
            logger.close()
        if ok:
            shutdown(info)
        elif info.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return out


def _loop(tr: Trainer, cfg: TrainConfig, out: Path, logger, on_step) -> None:
    main = tr.dist.is_main
    t_last, n_last = time.perf_counter(), 0
    with _stop_on_signals(tr):
        while tr.step < cfg.steps:
            m = tr.train_step()
            if on_step is not None:
                on_step(tr, m)
            if m["skipped"]:
                if tr.n_nonfinite >= cfg.max_nonfinite:
                    if main:
                        tr.save(out)
                    raise MedShiftError(
                        f"training diverged: {tr.n_nonfinite} non-finite losses/gradients in a "
                        f"row at step {tr.step} ({tr.n_skipped} skipped in total); lower --lr, "
                        "check the data for NaN/Inf, or raise --max-nonfinite")
            else:
                logger.advance()
                n_last += cfg.batch_size
                step, last = tr.step, tr.step == cfg.steps
                val = None
                if cfg.val_every and (step % cfg.val_every == 0 or last) and main:
                    val = tr.validate()
                    logger.scalar("val/loss", val, step)
                    if val < tr.best_val:
                        tr.best_val = val
                        tr.save_dir(out / "best")
                if step % cfg.log_every == 0 or last or val is not None:
                    now = time.perf_counter()
                    ips = n_last / max(now - t_last, 1e-9)
                    t_last, n_last = now, 0
                    logger.row(step, m, ips, val, tr.n_skipped)
                if step % cfg.ckpt_every == 0 and not last and main:
                    tr.save(out)
                    tr.save_dir(out / "checkpoints" / f"step_{step:07d}")
                    ckpt.prune_checkpoints(out / "checkpoints", cfg.keep_ckpts)
                if cfg.sample_every and step % cfg.sample_every == 0 and main:
                    grid = sample_grid(tr.ema.module, tr.codec, len(tr.domains),
                                       *_fixed_sources(tr), n=cfg.sample_images,
                                       steps=cfg.sample_steps, seed=cfg.seed)
                    write_png16(out / "samples" / f"step_{step:07d}.png", grid)
                    logger.image("samples", grid, step)
            if tr.should_stop():
                if main:
                    tr.save(out)
                    print(f"\ninterrupted at step {tr.step}: checkpoint written to {out}; continue "
                          "with --resume", flush=True)
                raise TrainingInterrupted(f"interrupted at step {tr.step}")


def _fixed_sources(tr: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """One validation image per domain (pixels) and its label, for translation grids."""
    keep = D.pick_balanced(tr.val_y, len(tr.domains))
    return tr.val_pixels[keep], tr.val_y[keep]
