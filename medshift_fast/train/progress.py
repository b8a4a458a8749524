"""Progress and logs of a training run (rank 0 only): tqdm, RUN/log.csv, TensorBoard, PNG grids.

log.csv columns: step, loss, lr, grad_norm, img_per_s, val_loss (empty when not validated),
skipped (non-finite steps so far). On resume, rows after the checkpoint's step (written by the
interrupted run after its last checkpoint) are dropped so the log has each step once.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import MedShiftError
from ..fileio import atomic_write_text

log = logging.getLogger("medshift_fast.train")

HEADER = ["step", "loss", "lr", "grad_norm", "img_per_s", "val_loss", "skipped"]


def _truncate_log(path: Path, step: int) -> None:
    rows = list(csv.reader(path.read_text().splitlines()))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    atomic_write_text(path, buf.getvalue())


class RunLogger:
    """Writes log.csv, drives the progress bar and (optionally) TensorBoard; no-op off rank 0."""

    def __init__(self, out: Path, cfg, start_step: int, enabled: bool, progress: bool,
                 desc: str = "train") -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.fh = self.wr = self.tb = None
        self.bar = tqdm(total=cfg.steps, initial=start_step, disable=not (enabled and progress),
                        desc=desc, dynamic_ncols=True)
        if not enabled:
            return
        path = out / "log.csv"
        if path.exists() and start_step > 0:
            _truncate_log(path, start_step)
        new = not path.exists() or start_step == 0
        self.fh = open(path, "w" if new else "a", newline="")
        self.wr = csv.writer(self.fh)
        if new:
            self.wr.writerow(HEADER)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise MedShiftError("--tensorboard needs the tensorboard package: "
                                    "`pip install tensorboard` (or drop --tensorboard)") from exc
            self.tb = SummaryWriter(str(out / "tb"))

    def advance(self) -> None:
        self.bar.update(1)

    def row(self, step: int, m: dict, ips: float, val: float | None, skipped: int) -> None:
        if not self.enabled:
            return
        self.wr.writerow([step, f"{m['loss']:.6f}", f"{m['lr']:.3e}", f"{m['grad_norm']:.4f}",
                          f"{ips:.1f}", "" if val is None else f"{val:.6f}", skipped])
        self.fh.flush()
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", img_s=f"{ips:.0f}")
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm"):
                self.tb.add_scalar(f"train/{k}", m[k], step)
            self.tb.add_scalar("train/img_per_s", ips, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, (grid[None] + 1.0) / 2.0, step, dataformats="CHW")

    def close(self) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()


def tile(rows: list[torch.Tensor], gap: int = 2) -> np.ndarray:
    """Rows of (n_i, 1, S, S) images -> one (H, W) array in [-1, 1] (white gaps, -1 padding)."""
    s = rows[0].shape[-1]
    ncol = max(r.shape[0] for r in rows)
    h, w = len(rows) * (s + gap) - gap, ncol * (s + gap) - gap
    grid = np.ones((h, w), np.float32)
    for i, r in enumerate(rows):
        for j in range(ncol):
            y0, x0 = i * (s + gap), j * (s + gap)
            tile_ = r[j, 0].float().clamp(-1, 1).cpu().numpy() if j < r.shape[0] else -1.0
            grid[y0:y0 + s, x0:x0 + s] = tile_
    return grid


@torch.no_grad()
def sample_grid(run, x_src: torch.Tensor, y_src: torch.Tensor, n: int, steps: int,
                seed: int) -> np.ndarray:
    """Samples per domain (rows 1..K) and translations of fixed images (rows K+1..).

    Translation row of a source image: column k shows it translated to domain k (the source
    itself in its own column) with the default settings (``TranslationSettings``). Cheap:
    euler with ``steps`` steps per leg; samples use the default decode guidance.

    Args:
        run: the EMA model as a ``run.LoadedRun`` (its codec maps pixels <-> model space).
        x_src: (M, 1, S, S) pixel images (one per domain); y_src: (M,) their labels.
    """
    from ..flow import sample
    from ..translate import DEFAULTS, Translator

    model, codec, k_dom = run.model, run.codec, len(run.domains)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    shape = tuple(codec.encode(x_src[:1].to(dev)).shape[1:])
    labels = torch.arange(k_dom, device=dev).repeat_interleave(n)
    xs = codec.decode(sample(model, labels, labels.numel(), shape,
                             guidance=DEFAULTS["guidance_decode"],
                             steps=steps, solver="euler", generator=g, device=dev))
    rows = [xs[d * n:(d + 1) * n] for d in range(k_dom)]
    x_src = x_src.to(dev)
    out = {}
    for i in range(x_src.shape[0]):
        src = int(y_src[i])
        for k in range(k_dom):
            if k != src and (src, k) not in out:
                idx = (y_src == src).nonzero().flatten().to(dev)
                tr = Translator(run, src, k, steps=steps, solver="euler")
                out[(src, k)] = dict(zip(idx.tolist(), tr.translate(x_src[idx])))
        rows.append(torch.stack([x_src[i] if k == src else out[(src, k)][i]
                                 for k in range(k_dom)]))
    return tile(rows)
