"""The downstream task of the utility benchmark: train a compact U-Net (``models.taskunet``) on
labelled images for a fixed budget, predict, score.

Training (:func:`train_task`) is a plain loop, deterministic for a given seed on one thread:
AdamW, one-cycle schedule (linear warm-up over ``WARMUP`` of the steps, cosine decay), ``steps``
steps of ``batch_size`` random ``crop``-pixel crops (horizontal flips with p = 0.5), L1 loss on
targets divided by ``scale`` (regression) or binary cross-entropy on logits (segmentation),
weighted by the domain-randomisation cut-out mask when ``randomize`` is on. Every draw (batch,
crop, flip, randomisation) comes from one generator seeded by ``seed``; the network's
initialisation from ``torch.manual_seed(seed)``. The budget is steps, not wall-clock, so a
result does not depend on the machine's load.

Scores per test image (:func:`scores`): regression: mean absolute error in the label's units
over all pixels; segmentation: Dice of the thresholded (p > 0.5) prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import MedShiftError

WARMUP = 0.1
TASKS = ("regression", "segmentation")
VERSION = 1  # bump when training or scoring changes: cached trainings are keyed by it


@dataclass(frozen=True)
class TaskBudget:
    """The fixed training budget of one downstream model.

    Attributes:
        steps: optimiser steps.
        batch_size: crops per step.
        crop: crop side in pixels (0: whole images).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        widths: U-Net channels per level.
    """

    steps: int = 400
    batch_size: int = 8
    crop: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.steps < 1 or self.batch_size < 1 or self.crop < 0 or self.lr <= 0:
            raise MedShiftError(f"bad downstream budget {self}: steps, batch_size >= 1, crop "
                                ">= 0, lr > 0")
        f = 2 ** (len(self.widths) - 1)
        if self.crop % f:
            raise MedShiftError(f"--crop {self.crop} must be a multiple of {f} (the U-Net's "
                                "downsampling)")

    def to_dict(self) -> dict:
        return asdict(self)


def bin_views(t: torch.Tensor, pool: int, mask: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/pool, W/pool): the area mean of pool x pool bins (a detector's
    binning); a mask's bin is 1 where at least half of it is foreground."""
    if pool == 1:
        return t
    if t.shape[-1] % pool or t.shape[-2] % pool:
        raise MedShiftError(f"views of {t.shape[-2]}x{t.shape[-1]} px cannot be binned "
                            f"{pool}x{pool}; choose a --pool that divides the size")
    b = F.avg_pool2d(t.float(), pool)
    return (b >= 0.5).float() if mask else b


def check_size(h: int, w: int, pool: int, budget: TaskBudget) -> None:
    """Refuse (before any work) views that cannot be binned or are smaller than the crop."""
    if h % pool or w % pool:
        raise MedShiftError(f"views of {h}x{w} px cannot be binned {pool}x{pool}; choose a "
                            "--pool that divides the size (1: no binning)")
    if budget.crop > min(h, w) // pool:
        raise MedShiftError(f"--crop {budget.crop} is larger than the binned views "
                            f"({h // pool}x{w // pool}); lower --crop or --pool")


def train_task(x: torch.Tensor, y: torch.Tensor, *, task: str, budget: TaskBudget, seed: int,
               scale: float = 1.0, randomize: bool = False) -> dict:
    """Train one downstream model.

    Args:
        x: (N, 1, H, W) training images in [-1, 1].
        y: (N, 1, H, W) their labels (units, or 0/1 masks).
        task: "regression" or "segmentation".
        budget: the fixed budget.
        seed: the training seed (initialisation and every draw).
        scale: regression targets are divided by it (the labels' typical magnitude).
        randomize: strong domain randomisation of every crop (``sim2real.randomize``).

    Returns:
        {"state": the trained weights, "loss": mean loss of the last 10 % of the steps}.
    """
    from ..models.taskunet import TaskUNet
    from .sim2real import randomize as dr

    if task not in TASKS:
        raise MedShiftError(f"unknown task {task!r}; choose {' or '.join(TASKS)}")
    if x.shape[0] != y.shape[0] or x.shape[-2:] != y.shape[-2:]:
        raise MedShiftError(f"images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    n, _, h, w = x.shape
    crop = budget.crop or min(h, w)
    if crop > min(h, w):
        raise MedShiftError(f"--crop {crop} is larger than the images ({h}x{w})")
    torch.manual_seed(seed)
    net = TaskUNet(budget.widths)
    opt = torch.optim.AdamW(net.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=WARMUP,
        anneal_strategy="cos", div_factor=25.0, final_div_factor=1e3)
    g = torch.Generator().manual_seed(seed)
    tail: list[float] = []
    net.train()
    for step in range(budget.steps):
        idx = torch.randint(n, (budget.batch_size,), generator=g)
        r0 = torch.randint(0, h - crop + 1, (budget.batch_size,), generator=g).tolist()
        c0 = torch.randint(0, w - crop + 1, (budget.batch_size,), generator=g).tolist()
        flip = (torch.rand(budget.batch_size, generator=g) < 0.5).tolist()
        xb = torch.stack([x[i, :, a:a + crop, b:b + crop] for i, a, b in zip(idx, r0, c0)])
        yb = torch.stack([y[i, :, a:a + crop, b:b + crop] for i, a, b in zip(idx, r0, c0)])
        for k, f in enumerate(flip):
            if f:
                xb[k], yb[k] = xb[k].flip(-1), yb[k].flip(-1)
        wb = torch.ones_like(yb)
        if randomize:
            xb, wb = dr(xb, g)
        out = net(xb)
        if task == "regression":
            loss_px = (out - yb / scale).abs()
        else:
            loss_px = F.binary_cross_entropy_with_logits(out, yb, reduction="none")
        loss = (loss_px * wb).sum() / wb.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= budget.steps - max(1, budget.steps // 10):
            tail.append(float(loss.detach()))
    return {"state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "loss": sum(tail) / len(tail)}


@torch.no_grad()
def predict(state: dict, x: torch.Tensor, *, task: str, budget: TaskBudget, scale: float = 1.0,
            batch_size: int = 16) -> torch.Tensor:
    """(N, 1, H, W) images -> (N, 1, H, W) predictions (label units, or 0/1 masks); images are
    edge-padded to the U-Net's factor and cropped back."""
    from ..models.taskunet import TaskUNet

    net = TaskUNet(budget.widths)
    net.load_state_dict(state)
    net.eval()
    f = net.factor
    h, w = x.shape[-2:]
    ph, pw = -h % f, -w % f
    outs = []
    for k in range(0, x.shape[0], batch_size):
        xb = x[k:k + batch_size]
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode="replicate")
        outs.append(net(xb)[..., :h, :w])
    p = torch.cat(outs)
    return p * scale if task == "regression" else (p > 0).float()


def scores(pred: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(N,) per-image score: MAE (regression, label units) or Dice (segmentation; 1.0 when
    both prediction and label are empty)."""
    if task == "regression":
        return (pred - y).abs().flatten(1).mean(1)
    inter = (pred * y).flatten(1).sum(1)
    tot = pred.flatten(1).sum(1) + y.flatten(1).sum(1)
    return torch.where(tot > 0, 2 * inter / tot.clamp_min(1e-12), torch.ones_like(tot))
