"""The one training loop, shared by the flow (``train``), the autoencoder and distillation.

A :class:`Task` says WHAT is trained: the network, the data of a micro-step, the loss, the
validation score and what a checkpoint folder holds. The :class:`Trainer` does the rest the same
way for all of them: fused AdamW + one-cycle cosine schedule with warm-up, gradient accumulation,
gradient clipping, EMA, DDP (the loss is per rank; DDP averages the gradients), bf16 autocast,
channels_last, torch.compile, a non-finite guard (skip + count, stop after ``max_nonfinite`` in a
row), generators whose states are checkpointed, exact resume (the data order is a function of the
micro-batch counter), SIGINT/SIGTERM checkpoint-and-stop, progress bar + log.csv (+ TensorBoard),
checkpoints every ``ckpt_every`` steps (the newest ``keep_ckpts`` kept) and the best validation
checkpoint in RUN/best/.

Wall-clock budget (``minutes``, ``train.budget.WallClock``): after every step the loop stops,
as at its last step (validation, log row, samples, checkpoint), when a next step like the one
just taken would end past the budget; all ranks stop at the same step (the flag travels in the
step's one all-reduce). The schedule then runs on the clock: its position is
``max(step, steps * loop time / loop time available)``, so warm-up and cosine decay fit the
budget instead of being cut off.

The config object of a task must have the fields of the loop (all ``TrainConfig`` fields of the
same name): out, steps, batch_size, grad_accum, lr, weight_decay, warmup_frac, grad_clip,
ema_decay, seed, precision, channels_last, compile, max_nonfinite, log_every, ckpt_every,
keep_ckpts, val_every, device, resume, tensorboard (and optionally minutes).
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
from torch import nn

from ..errors import MedShiftError
from ..fileio import atomic_dir
from ..models.ema import EMA
from ..models.unet import count_parameters
from ..run import resolve_device
from . import checkpoint as ckpt
from .budget import WallClock
from .distributed import DistInfo, all_reduce_sum, init_from_env, no_sync, shutdown
from .progress import RunLogger

log = logging.getLogger("medshift_fast.train")

__all__ = ["Task", "Trainer", "TrainingInterrupted", "autocast_ctx", "make_scheduler",
           "run_training"]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was written before stopping."""


def autocast_ctx(precision: str, device: torch.device):
    """bf16 autocast on CUDA by default; fp32 on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scheduler(opt: torch.optim.Optimizer, cfg, clock: Callable[[], float] | None = None):
    """One-cycle: linear warm-up over warmup_frac of the steps, then cosine decay to ~0.

    ``clock`` (a time budget): the schedule's position in steps according to the clock; the
    schedule follows ``max(step, clock())``.
    """
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps))) if cfg.warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if clock is not None:
            step = max(step, clock())
        if warm and step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, cfg.steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Task:
    """What a :class:`Trainer` trains. Subclasses override the methods below.

    ``setup`` runs first (data, model configuration); ``build_model`` right after
    ``torch.manual_seed(cfg.seed)`` so initial weights depend on the seed alone.
    """

    desc = "train"

    def setup(self, trainer: Trainer) -> None:
        """Open the data (``trainer.dist`` is known); raise MedShiftError on bad input."""

    def build_model(self, trainer: Trainer) -> nn.Module:
        """The network to train (called right after ``torch.manual_seed(cfg.seed)``)."""
        raise NotImplementedError

    def batch(self, trainer: Trainer, m: int):
        """This rank's micro-batch number ``m`` (any object ``loss`` understands)."""
        raise NotImplementedError

    def loss(self, trainer: Trainer, fwd: nn.Module, batch) -> torch.Tensor:
        """The scalar loss of one micro-batch (forward through ``fwd``, under autocast)."""
        raise NotImplementedError

    def validate(self, trainer: Trainer) -> float | None:
        """Validation score of ``trainer.ema.module`` (lower is better), or None."""
        return None

    def save(self, trainer: Trainer, run_dir: Path) -> None:
        """Write a complete checkpoint (weights, config, ``trainer.training_state()``)."""
        raise NotImplementedError

    def check_resume(self, trainer: Trainer, src: Path) -> None:
        """Refuse to resume from ``src`` unless it is compatible (MedShiftError naming why)."""

    def state(self, trainer: Trainer) -> dict[str, Any] | None:
        """Training state the task owns beyond the model, EMA and optimizer (e.g. a
        discriminator and its optimizer): saved in the training state, given back to
        ``load_state`` on resume. None: nothing."""
        return None

    def load_state(self, trainer: Trainer, state: dict[str, Any] | None) -> None:
        """Restore what ``state`` returned (None when the checkpoint holds nothing)."""

    def on_start(self, trainer: Trainer, out: Path) -> None:
        """Rank 0, before the first step (e.g. write train_config.json)."""

    def on_step(self, trainer: Trainer, step: int, out: Path, logger: RunLogger) -> None:
        """Rank 0, after every optimizer step (e.g. sample grids)."""

    def finish(self, trainer: Trainer, out: Path) -> None:
        """Rank 0, after the last step (the last checkpoint is written by ``save`` before)."""

    def close(self) -> None:
        """Release data workers."""


class Trainer:
    """Model, EMA, optimizer, schedule, generators and data of one run (one rank of it).

    Args:
        cfg: the run configuration (see the module docstring for the fields it needs).
        task: what is trained.
        dist_info: process group (default: one process on cfg.device).
    """

    def __init__(self, cfg, task: Task, dist_info: DistInfo | None = None) -> None:
        self.clock = WallClock(getattr(cfg, "minutes", None))  # data loading counts
        self.out_of_time = False
        self.cfg, self.task = cfg, task
        self.dist = info = dist_info or DistInfo(device=resolve_device(cfg.device))
        self.device = dev = info.device
        micro = cfg.batch_size // cfg.grad_accum
        if micro % info.world:
            raise MedShiftError(f"batch_size / grad_accum = {micro} images per micro-step must "
                                f"be divisible by the {info.world} processes")
        self.local_batch = micro // info.world
        torch.manual_seed(cfg.seed)
        task.setup(self)
        self.model = task.build_model(self).to(dev)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_decay)
        # The fused AdamW kernel (one pass over every parameter, CPU and CUDA) instead of the
        # per-parameter loop: ~6 % of a tiny-preset CPU step went to Adam's small ops.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                     fused=dev.type in ("cpu", "cuda"))
        self.sched = make_scheduler(self.opt, cfg, (lambda: cfg.steps * self.clock.position())
                                    if self.clock.enabled else None)
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

    # ------------------------------------------------------------------------------- one step
    def batch(self):
        """This rank's next micro-batch."""
        b = self.task.batch(self, self.micro)
        self.micro += 1
        return b

    def request_stop(self, *_: Any) -> None:
        """Ask the loop to checkpoint and stop after the current step (signal handler)."""
        self._stop_local = True

    def should_stop(self) -> bool:
        """A stop was asked for (SIGINT/SIGTERM on any rank): finish the step and checkpoint."""
        return self.stop_requested or (not self.dist.enabled and self._stop_local)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (grad_accum micro-steps); returns loss, grad_norm, lr, skipped."""
        cfg, dev = self.cfg, self.device
        t_start = self.clock.now()
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        lr = self.opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=dev)
        for a in range(cfg.grad_accum):
            batch = self.batch()
            with no_sync(self.ddp, a < cfg.grad_accum - 1):
                loss = self.task.loss(self, self.fwd, batch)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        loss_mean = loss_sum / cfg.grad_accum
        bad = (~torch.isfinite(loss_mean)) | (~torch.isfinite(gn.to(dev)))
        late = torch.tensor(float(self.clock.late(t_start)), device=dev)
        stats = torch.stack([torch.nan_to_num(loss_mean, nan=0.0, posinf=0.0, neginf=0.0),
                             bad.float(), torch.tensor(float(self._stop_local), device=dev),
                             late])
        stats = all_reduce_sum(stats, self.dist).tolist()  # one collective, one host sync
        self.stop_requested = stats[2] > 0
        self.out_of_time = self.out_of_time or stats[3] > 0
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

    def autocast(self):
        """The forward's autocast context (bf16 on CUDA by default, fp32 on a CPU)."""
        return autocast_ctx(self.cfg.precision, self.device)

    # ---------------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        """Everything exact resume needs beyond the weights (optimizer, schedule, RNGs, ...)."""
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
            **self.clock.state(),
        }
        if self.noise_gen is not self.gen:
            st["noise_generator"] = self.noise_gen.get_state()
        task_state = self.task.state(self)
        if task_state is not None:
            st["task"] = task_state
        if self.device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return st

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write the last checkpoint into the run directory (file by file, each atomic)."""
        out = Path(run_dir or self.cfg.out)
        self.task.save(self, out)
        return out

    def save_dir(self, run_dir: str | Path) -> Path:
        """Write a complete checkpoint folder atomically (temporary folder + rename)."""
        return atomic_dir(run_dir, lambda tmp: self.task.save(self, Path(tmp)))

    def load_state(self, run_dir: str | Path) -> Path:
        """Resume from a checkpoint folder; refuses one whose config is incompatible."""
        src = ckpt.resolve_resume(run_dir)
        self.task.check_resume(self, src)
        st = ckpt.load_training_state(src)
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"])
        if "noise_generator" in st and self.noise_gen is not self.gen:
            self.noise_gen.set_state(st["noise_generator"])
        torch.set_rng_state(st["torch_rng"])
        if "cuda_rng" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], self.device)
        self.task.load_state(self, st.get("task"))
        self.step = int(st["step"])
        self.micro = int(st.get("micro", self.step * self.cfg.grad_accum))
        self.n_skipped = int(st.get("n_skipped", 0))
        self.best_val = float(st.get("best_val", math.inf))
        self.clock.load(st)
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


def run_training(cfg, task: Task, progress: bool = True,
                 on_step: Callable[[Trainer, dict], None] | None = None) -> Path:
    """Train ``task`` to ``cfg.steps`` (or until ``cfg.minutes`` are spent) and write the run
    directory ``cfg.out``; returns its path.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes logs and checkpoints.
    ``cfg.resume`` ("last" or a checkpoint folder) continues a run exactly.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is written.
        MedShiftError: bad input, incompatible resume, or ``max_nonfinite`` bad steps in a row.
    """
    info = init_from_env(cfg.device)
    logger = None
    ok = False
    try:
        tr = Trainer(cfg, task, dist_info=info)
        main = info.is_main
        out = Path(cfg.out)
        if cfg.resume:
            src = tr.load_state(out if cfg.resume == "last" else cfg.resume)
            if main:
                log.info("resumed from %s at step %d", src, tr.step)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            task.on_start(tr, out)
        logger = RunLogger(out, cfg, tr.step, main, progress, desc=task.desc)
        logger.bar.set_description(
            f"{task.desc} ({count_parameters(tr.model) / 1e6:.2f} M, {info.world} proc)")
        _loop(tr, cfg, out, logger, on_step)
        if main:
            tr.save(out)
            task.finish(tr, out)
        ok = True
    finally:
        if logger is not None:
            logger.close()
        task.close()
        if ok:
            shutdown(info)
        elif info.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return out


def _loop(tr: Trainer, cfg, out: Path, logger: RunLogger, on_step) -> None:
    main = tr.dist.is_main
    t_last, n_last = time.perf_counter(), 0
    tr.out_of_time = tr.clock.start_loop()
    with _stop_on_signals(tr):
        while tr.step < cfg.steps and not tr.out_of_time:
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
                step, last = tr.step, tr.step == cfg.steps or tr.out_of_time
                val = None
                if cfg.val_every and (step % cfg.val_every == 0 or last) and main:
                    val = tr.task.validate(tr)
                    if val is not None:
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
                if main:
                    tr.task.on_step(tr, step, out, logger)
            if tr.should_stop():
                if main:
                    tr.save(out)
                raise TrainingInterrupted(f"at step {tr.step}: checkpoint written to {out}; "
                                          "continue with --resume")
    if tr.out_of_time and main:
        print(f"\ntime budget of {cfg.minutes:g} min reached after {tr.clock.elapsed():.0f} s "
              f"at step {tr.step} (of at most {cfg.steps}); the run is saved at that step",
              flush=True)
