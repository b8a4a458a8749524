"""Training the velocity field: class-conditional SB flow matching (``medshift train``).

One micro-step: this rank's share of a global micro-batch (x_1, y) -> ``flow.SBFlowMatcher``
with the process group as its coupling group (noise, ONE OT/SB coupling over all ranks, t, x_t,
u_t, label dropout) -> loss = ||v(x_t, t, y) - u_t||^2. The loop itself (optimizer, schedule,
EMA, accumulation, DDP, guard, checkpoints, resume, progress) is ``train.trainer``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import write_png16
from ..errors import MedShiftError
from ..fileio import atomic_write_text, check_not_inside
from ..flow.coupling import CouplingConfig
from ..flow.matcher import SBFlowMatcher
from ..models.codec import codec_for, copy_autoencoder
from ..models.unet import UNet, preset_config
from ..run import RUN_ARTIFACTS, LoadedRun, clear_run, read_run_config, run_exists, save_run
from . import checkpoint as ckpt
from . import data as D
from .config import TrainConfig
from .distributed import DistInfo
from .progress import sample_grid
from .trainer import Task, Trainer, TrainingInterrupted, run_training

log = logging.getLogger("medshift_fast.train")

__all__ = ["FlowTask", "Trainer", "TrainingInterrupted", "flow_trainer", "train"]


class FlowTask(Task):
    """The velocity field v(x_t, t, y) of SB conditional flow matching.

    Args:
        cfg: the run configuration.
        data: optional (x (N, 1, S, S) pixels in [-1, 1], y (N,), domains) instead of cfg.data.
        val_data: optional (x, y) validation images (default: the val split, or a fixed subset
            of the training images when there is none).
    """

    desc = "train"

    def __init__(self, cfg: TrainConfig, data=None, val_data=None) -> None:
        self.cfg, self._data, self._val = cfg, data, val_data
        self._source = None

    # ------------------------------------------------------------------------------- set-up
    def setup(self, tr: Trainer) -> None:
        """Task hook: codec, training/validation data, what the run learns (scale, intensity)."""
        cfg, info = self.cfg, tr.dist
        self.codec = codec_for(cfg.latent, cfg.latent_diffusers, tr.device)
        td = D.prepare_data(cfg, self.codec, info, self._data, self._val)
        self.td = td
        self.learned = D.learned_record(cfg, td) if info.is_main else None
        self.domains = td.domains
        if td.mode == "memory":
            self._source = D.MemorySource(td.x, td.y, td.stream, info)
        c, s = td.val_x.shape[1], td.val_x.shape[-1]
        over = {"model_channels": cfg.model_channels} if cfg.model_channels else {}
        self.model_cfg = preset_config(cfg.preset, in_channels=c, num_classes=len(td.domains),
                                       image_size=s, **over)
        self.matcher = SBFlowMatcher(
            len(td.domains),
            CouplingConfig(method=cfg.coupling, sigma=cfg.sigma, eps_relative=cfg.eps_relative,
                           sampling=cfg.plan_sampling),
            p_uncond=cfg.p_uncond,
        )

    def build_model(self, tr: Trainer) -> UNet:
        """Task hook: the class-conditional U-Net (crop and size checked against its factor)."""
        model = UNet(self.model_cfg)
        s, crop = self.td.val_x.shape[-1], self.cfg.crop
        if s % model.down_factor:
            raise MedShiftError(f"model-space size {s} must be divisible by "
                                f"{model.down_factor}; change --image-size")
        if crop is not None and (crop > s or crop % model.down_factor):
            raise MedShiftError(f"crop {crop} must be at most the model-space size {s} and "
                                f"divisible by {model.down_factor}; change --crop")
        return model

    def source(self, tr: Trainer):
        """The batch source (started lazily, at the current micro-batch when streaming)."""
        if self._source is None:  # streaming: start the workers at the current micro-batch
            enc = self.codec.encode if self.codec.kind != "pixel" else None
            self._source = D.StreamSource(self.td.dataset, self.td.stream, tr.dist,
                                          self.cfg.num_workers, tr.micro, enc)
        return self._source

    # ------------------------------------------------------------------------------ one step
    def batch(self, tr: Trainer, m: int):
        """Task hook: micro-batch ``m`` (model-space images and their domain labels)."""
        return self.source(tr).batch(m)

    def loss(self, tr: Trainer, fwd, batch) -> torch.Tensor:
        """Task hook: the SB-CFM loss of a micro-batch (coupled pairs, path, guidance drop)."""
        x1, y = batch
        crop = self.cfg.crop
        if crop is not None and crop < x1.shape[-1]:
            x1 = D.random_crop(x1, crop, tr.gen, tr.dist)
        fb = self.matcher(x1, y, tr.gen, noise_generator=tr.noise_gen, group=tr.dist)
        xt = fb.x_t
        if self.cfg.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            v = fwd(xt, fb.t, fb.y)
        return F.mse_loss(v.float(), fb.u_t.float())

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        """Flow-matching loss of the EMA model on the validation images, fixed generator."""
        cfg, dev, td = self.cfg, tr.device, self.td
        g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        mb = cfg.batch_size // cfg.grad_accum
        total, n = 0.0, 0
        for k in range(0, td.val_x.shape[0], mb):
            xb = td.val_x[k:k + mb].to(dev)
            fb = self.matcher(xb, td.val_y[k:k + mb], g, p_uncond=0.0)
            with tr.autocast():
                v = tr.ema.module(fb.x_t, fb.t, fb.y)
            total += F.mse_loss(v.float(), fb.u_t.float(), reduction="sum").item()
            n += fb.u_t.numel()
        return total / max(n, 1)

    # ---------------------------------------------------------------------------- checkpoints
    def save(self, tr: Trainer, run_dir: Path) -> None:
        """Task hook: the run directory (EMA/raw weights, config, state, learned record)."""
        extra = {"step": tr.step, "latent": self.codec.reference(), "n_skipped": tr.n_skipped,
                 "best_val": None if tr.best_val == float("inf") else tr.best_val,
                 "learned": self.learned}
        save_run(run_dir, self.cfg, self.model_cfg, self.domains, tr.ema.state_dict(),
                 tr.model.state_dict(), tr.training_state(), extra=extra)
        copy_autoencoder(self.codec, run_dir)

    def check_resume(self, tr: Trainer, src: Path) -> None:
        """Task hook: refuse to resume a run of another model, data layout or codec."""
        ckpt.check_compatible(src, self.cfg, self.model_cfg, self.domains, self.codec.kind)

    def on_start(self, tr: Trainer, out: Path) -> None:
        """Task hook: clear a replaced run (--overwrite) and write train_config.json."""
        if self.cfg.overwrite and not self.cfg.resume:
            clear_run(out)  # nothing of the replaced run survives to be mixed up with this one
        atomic_write_text(out / "train_config.json", self.cfg.to_json())
        copy_autoencoder(self.codec, out)

    def on_step(self, tr: Trainer, step: int, out: Path, logger) -> None:
        """Task hook: the sample grid every ``sample_every`` steps."""
        cfg = self.cfg
        if cfg.sample_every and step % cfg.sample_every == 0:
            keep = D.pick_balanced(self.td.val_y, len(self.domains))
            ema_run = LoadedRun(None, tr.ema.module, self.model_cfg, self.domains,
                                {"train": {"image_size": cfg.image_size}}, self.codec)
            grid = sample_grid(ema_run, self.td.val_pixels[keep], self.td.val_y[keep],
                               n=cfg.sample_images, steps=cfg.sample_steps, seed=cfg.seed)
            write_png16(out / "samples" / f"step_{step:07d}.png", grid)
            logger.image("samples", grid, step)

    def close(self) -> None:
        """Task hook: stop the data workers."""
        if self._source is not None:
            self._source.close()


def flow_trainer(cfg: TrainConfig, data=None, val_data=None,
                 dist_info: DistInfo | None = None) -> Trainer:
    """A :class:`Trainer` of the flow task (one process unless ``dist_info`` says otherwise)."""
    return Trainer(cfg, FlowTask(cfg, data, val_data), dist_info)


def config_for_run(given: dict[str, Any], resume: str | None = None) -> TrainConfig:
    """The TrainConfig of ``medshift train``: the flags given on top of the defaults, or on top
    of the checkpoint's own configuration when resuming (``resume``: "last" or a folder)."""
    given = dict(given)
    given.pop("resume", None)
    if isinstance(given.get("domains"), str):
        given["domains"] = tuple(d.strip() for d in given["domains"].split(",") if d.strip())
    if not resume:
        return TrainConfig(**given)
    src = ckpt.resolve_resume(given.get("out", "") if resume == "last" else resume)
    saved = TrainConfig.from_dict(read_run_config(src)["train"])
    return saved.replace(**given, resume=resume)


def check_fresh_out(cfg) -> None:
    """The output-safety rule of ``train``, ``train-autoencoder`` and ``distill``, before any work.

    ``--out`` must not be (or lie inside) an input: the dataset (``--data``) or the teacher run
    (``--teacher``), even with ``--overwrite``. A folder that already holds anything a run writes
    (config.json, weights, log.csv, checkpoints/, samples/, ...: ``run.RUN_ARTIFACTS``) is
    continued only with ``--resume`` and replaced only with ``--overwrite`` (which removes those
    names and nothing else); other files in the folder are never touched.
    """
    inputs = [(flag, getattr(cfg, name, None)) for flag, name in (("--data", "data"),
                                                                  ("--teacher", "teacher"))]
    check_not_inside(cfg.out, inputs)
    if cfg.resume or getattr(cfg, "overwrite", False):
        return
    found = [n for n in RUN_ARTIFACTS if (Path(cfg.out) / n).exists()]
    if run_exists(cfg.out):
        raise MedShiftError(f"{cfg.out} already holds a run; continue it with --resume, pass "
                            "--overwrite to replace it, or choose another --out")
    if found:
        raise MedShiftError(f"{str(cfg.out)!r} already holds {', '.join(found)} of an earlier "
                            "run; pass --overwrite to replace them, or choose another --out")


def check_domains(cfg, data=None) -> None:
    """A translator needs two domains or more: refuse a dataset (or ``--domains``) with fewer,
    naming what was found, before any image is decoded (a scan, no pixel reads)."""
    if data is not None:
        names = tuple(data[2])
    elif cfg.data:
        from ..data import FolderDataset

        names = FolderDataset(cfg.data, domains=cfg.domains, domain_map=cfg.domain_map,
                              validate=False).domains
    else:
        return
    if len(names) < 2:
        where = f"under {cfg.data!r}" if data is None else "in the data given"
        raise MedShiftError(f"only one domain ({', '.join(names) or 'none'}) {where}: a "
                            "translator learns to map between domains and needs at least two - "
                            "add another domain folder (ROOT/<domain>/...), list two or more "
                            "with --domains, or split the folders with --domain-map")


def train(cfg: TrainConfig, progress: bool = True, data=None, val_data=None,
          on_step=None) -> Path:
    """Train a run to ``cfg.steps`` (or for ``cfg.minutes``) and write the run directory
    ``cfg.out``; returns its path.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes logs and checkpoints.

    Args:
        cfg: run configuration (``cfg.resume`` continues a checkpoint exactly).
        progress: show a progress bar.
        data, val_data: optional in-memory data (see :class:`FlowTask`).
        on_step: called as ``on_step(trainer, metrics)`` after every optimizer step.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is written.
        MedShiftError: bad input, fewer than two domains, incompatible resume, an existing
            run in ``cfg.out`` or ``cfg.out`` inside ``cfg.data`` (``check_fresh_out``), or
            ``max_nonfinite`` bad steps in a row.
    """
    check_fresh_out(cfg)
    check_domains(cfg, data)
    return run_training(cfg, FlowTask(cfg, data, val_data), progress, on_step)
