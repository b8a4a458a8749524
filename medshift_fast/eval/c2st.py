"""Classifier two-sample test (C2ST): can a small CNN tell a method's translations from real
images of the target domain? (Lopez-Paz & Oquab, ICLR 2017.)

Held-out accuracy 0.5: the classifier cannot tell them apart; 1.0: trivially told apart. It
judges everything that differs (intensity, anatomy, texture), and at the native pixel scale of
random crops, mostly texture: the quantum mottle that FID-ENL0 on 224-px resized images barely
sees. It is an *evaluation*: no training term anywhere uses this classifier or its features
(the students' discriminator is another network; a test checks that nothing under ``train/``
imports this module).

Protocol (:func:`c2st`), for each of ``seeds`` seeds:

1. **Split.** Both sets are split into train / held-out halves *by group* (subject, else view,
   else image), so no subject sits on both sides; a different seed gives a different split.
2. **Train** a fresh classifier (default :class:`TextureCNN`) for a fixed budget of ``steps``
   Adam steps (cosine-decayed learning rate) on balanced batches of random ``crop`` x ``crop``
   crops (native pixel scale, random horizontal/vertical flips) of the training halves. The crops
   are standardised by one global mean and std of the training pixels (an affine map: the whole
   dynamic range, nothing clipped or quantised).
3. **Score** every held-out image by the mean logit of the crops tiling it (non-overlapping, the
   last row/column aligned with the far edge); it is called real when the mean is > 0. The
   seed's accuracy is the balanced accuracy (mean of the accuracy on real and on translated
   held-out images), so 0.5 is chance whatever the set sizes.

The reported accuracy is the mean over seeds; its interval is a two-level percentile bootstrap:
seeds resampled with replacement and, within each, the held-out images of each class resampled
with replacement (the spread over classifier retraining and over the finite held-out set).
The interval does not cover the choice of real reference images or a different architecture.

:class:`TextureCNN` is a generic learned texture classifier, not a hand-picked statistic: 8
learned 5 x 5 filters constrained to annihilate polynomials of degree <= 2 inside their window
(Bayar & Stamm's constrained first layer, one order higher: the smooth anatomy does not drive
them, the grain does), each followed by a log-energy log(h² + eps) (so sparse edges do not
dominate a crop's statistics), beside 2 learned unconstrained 5 x 5 filters that carry the local
signal (noise is signal dependent); a 1 x 1 layer mixes them, a 3 x 3 stride-2 layer sees their
spatial arrangement (the grain size of the mottle), then the spatial mean and a linear
read-out. Any other ``nn.Module`` factory (B, 1, c, c) -> (B,) or (B, 1) logits can be passed.

Cost: ``seeds`` x ``steps`` steps of ``batch`` crops; with the defaults (3 x 200 x 32 crops of
24 px) a few CPU seconds per row (``docs/evaluation.md`` has the measured numbers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MedShiftError


@dataclass(frozen=True)
class C2STConfig:
    """Settings of :func:`c2st`.

    Attributes:
        seeds: classifiers trained (each on its own split).
        steps: Adam steps per classifier (fixed budget).
        batch: crops per step (half real, half translated).
        crop: crop side in pixels (native scale; capped at the image size).
        lr: peak learning rate (cosine decay to 0).
        holdout: fraction of each set's groups held out for scoring.
        max_real: at most this many real images are used (evenly spread over the set).
        bootstrap: resamples of the interval.
        level: interval coverage.
    """

    seeds: int = 3
    steps: int = 200
    batch: int = 32
    crop: int = 24
    lr: float = 3e-3
    holdout: float = 0.5
    max_real: int = 192
    bootstrap: int = 1000
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.steps < 1 or self.batch < 2 or self.batch % 2:
            raise MedShiftError(f"C2ST needs seeds >= 1, steps >= 1 and an even batch >= 2, got "
                                f"{self.seeds}, {self.steps}, {self.batch}")
        if self.crop < 8 or not 0.0 < self.holdout < 1.0 or self.max_real < 2:
            raise MedShiftError(f"C2ST needs crop >= 8, holdout in (0, 1) and max_real >= 2, got "
                                f"{self.crop}, {self.holdout}, {self.max_real}")
        if self.bootstrap < 1 or not 0.0 < self.level < 1.0:
            raise MedShiftError(f"C2ST bootstrap must be >= 1 and level in (0, 1), got "
                                f"{self.bootstrap}, {self.level}")


# ------------------------------------------------------------------------------- classifier
def _polynomial_basis(size: int, order: int) -> torch.Tensor:
    """(P, size²) orthonormal basis of the 2-D polynomials of degree <= order on the window."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    polys = [xx**i * yy**j for i in range(order + 1) for j in range(order + 1 - i)]
    q, _ = torch.linalg.qr(torch.stack([p.flatten() for p in polys]).T)
    return q.T.float().contiguous()


class MomentFreeConv2d(nn.Conv2d):
    """A learned convolution whose kernels annihilate 2-D polynomials of degree <= ``order``
    (each kernel is projected onto the orthogonal complement of those polynomials in every
    forward pass, so the constraint holds exactly while the filters learn)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, order: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, bias=False)
        if (order + 1) * (order + 2) // 2 >= kernel_size**2:
            raise MedShiftError(f"a {kernel_size}x{kernel_size} kernel has no room for a "
                                f"degree-{order} moment constraint")
        self.register_buffer("basis", _polynomial_basis(kernel_size, order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.flatten(1)
        w = w - (w @ self.basis.T) @ self.basis
        return F.conv2d(x, w.view_as(self.weight))


class TextureCNN(nn.Module):
    """The default C2ST classifier (module docstring): (B, 1, c, c) crops -> (B,) logits.

    Layers: [grain: ``grain`` moment-free k x k filters | signal: ``signal`` free k x k filters]
    -> batch norm -> [log(g² + eps) | s] -> 1 x 1 conv (``width``) -> BN, ReLU -> 3 x 3 conv,
    stride 2 (``width``: the spatial arrangement of the energies, i.e. the mottle's grain size)
    -> BN, ReLU -> spatial mean -> linear.

    Args:
        grain: constrained (grain) filters.
        signal: unconstrained (local signal) filters.
        width: channels of the mixing and spatial layers.
        kernel: filter size.
        order: polynomial degree the grain filters annihilate.
        eps: floor of the log-energy (after batch normalisation, so in units of the batch's
            response std: small enough that faint grain, e.g. in air, is not cut off).
    """

    def __init__(self, grain: int = 8, signal: int = 2, width: int = 16, kernel: int = 5,
                 order: int = 2, eps: float = 1e-4):
        super().__init__()
        self.grain = MomentFreeConv2d(1, grain, kernel, order)
        self.signal = nn.Conv2d(1, signal, kernel)
        self.norm = nn.BatchNorm2d(grain + signal)
        self.mix = nn.Sequential(nn.Conv2d(grain + signal, width, 1), nn.BatchNorm2d(width),
                                 nn.ReLU(), nn.Conv2d(width, width, 3, stride=2),
                                 nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, 1)
        self.n_grain, self.eps = grain, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.cat([self.grain(x), self.signal(x)], 1))
        g, s = h[:, :self.n_grain], h[:, self.n_grain:]
        h = torch.cat([torch.log(g.square() + self.eps), s], 1)
        return self.head(self.mix(h).mean((-2, -1))).squeeze(1)


def default_classifier(seed: int) -> nn.Module:  # noqa: ARG001 - factories may use the seed
    """A fresh :class:`TextureCNN` (the caller seeds torch's generator)."""
    return TextureCNN()


# ---------------------------------------------------------------------------------- result
@dataclass
class C2STResult:
    """Outcome of :func:`c2st`.

    Attributes:
        accuracy: mean over seeds of the held-out balanced accuracy.
        lo, hi: bootstrap interval (see the module docstring).
        per_seed: each seed's held-out balanced accuracy.
        n_train: (real, translated) training images per seed (of the first seed).
        n_heldout: (real, translated) held-out images per seed (of the first seed).
        crop: crop side used.
        seconds: wall-clock seconds; cpu_seconds: this process's CPU seconds.
        config: the settings.
    """

    accuracy: float
    lo: float
    hi: float
    per_seed: list[float] = field(default_factory=list)
    n_train: tuple[int, int] = (0, 0)
    n_heldout: tuple[int, int] = (0, 0)
    crop: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The columns ``evaluate`` adds to a method row."""
        return {"c2st_acc": self.accuracy, "c2st_lo": self.lo, "c2st_hi": self.hi,
                "c2st_seed_std": float(np.std(self.per_seed)), "c2st_seconds": self.seconds}


# -------------------------------------------------------------------------------- protocol
def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
        raise MedShiftError(f"C2ST: {name} must be an (N, 1, H, W) tensor, got {shape}")
    if min(x.shape[-2:]) < 8:
        raise MedShiftError(f"C2ST: {name} images of {tuple(x.shape[-2:])} px are too small "
                            "(at least 8 x 8)")
    x = x.detach().float().cpu()
    if not bool(torch.isfinite(x).all()):
        raise MedShiftError(f"C2ST: {name} contains NaN or Inf")
    return x


def _groups(groups: Sequence | None, n: int, name: str) -> list:
    if groups is None:
        return list(range(n))
    if len(groups) != n:
        raise MedShiftError(f"C2ST: {name}_groups has {len(groups)} entries for {n} images")
    return [g if g is not None else f"#image{i}" for i, g in enumerate(groups)]


def _split(groups: list, holdout: float, gen: torch.Generator, name: str):
    """(train indices, held-out indices): whole groups on one side."""
    keys = sorted(set(map(str, groups)))
    if len(keys) < 2:
        raise MedShiftError(f"C2ST: the {name} images form {len(keys)} group (subject); at "
                            "least 2 are needed to hold one out")
    perm = torch.randperm(len(keys), generator=gen).tolist()
    n_hold = min(len(keys) - 1, max(1, round(holdout * len(keys))))
    held = {keys[i] for i in perm[:n_hold]}
    tr = [i for i, g in enumerate(groups) if str(g) not in held]
    te = [i for i, g in enumerate(groups) if str(g) in held]
    return torch.tensor(tr), torch.tensor(te)


def random_crops(x: torch.Tensor, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ``c`` x ``c`` crops of (N, 1, H, W) images, each flipped at random
    horizontally and vertically: (n, 1, c, c)."""
    N, _, H, W = x.shape
    i = torch.randint(0, N, (n,), generator=gen)
    oy = torch.randint(0, H - c + 1, (n,), generator=gen)
    ox = torch.randint(0, W - c + 1, (n,), generator=gen)
    ar = torch.arange(c)
    out = x[i[:, None, None], 0, (oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]]
    flip = torch.rand(n, 2, generator=gen) < 0.5
    out = torch.where(flip[:, 0, None, None], out.flip(-1), out)
    out = torch.where(flip[:, 1, None, None], out.flip(-2), out)
    return out.unsqueeze(1)


def tile_crops(x: torch.Tensor, c: int) -> torch.Tensor:
    """The ``c`` x ``c`` tiles covering each image (non-overlapping; the last row/column aligned
    with the far edge): (N, T, 1, c, c)."""
    H, W = x.shape[-2:]

    def starts(n):
        s = list(range(0, n - c + 1, c))
        return s + [n - c] if s[-1] != n - c else s

    tiles = [x[:, :, y:y + c, z:z + c] for y in starts(H) for z in starts(W)]
    return torch.stack(tiles, 1)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = model(x)
    return y.reshape(y.shape[0], -1)[:, 0] if y.dim() > 1 else y


def _fit_and_score(real, fake, tr_r, te_r, tr_f, te_f, cfg: C2STConfig, c: int, seed: int,
                   classifier: Callable[[int], nn.Module]):
    """One seed: train on the training halves, return per-image correctness on the held-out
    halves: (real (n_r,) bool, translated (n_f,) bool)."""
    gen = torch.Generator().manual_seed(seed)
    xr, xf = real[tr_r], fake[tr_f]
    pool = torch.cat([xr.flatten(), xf.flatten()])
    mu, sd = float(pool.mean()), max(float(pool.std()), 1e-8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = classifier(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps)))
    half = cfg.batch // 2
    target = torch.cat([torch.ones(half), torch.zeros(half)])
    model.train()
    for _ in range(cfg.steps):
        xb = torch.cat([random_crops(xr, half, c, gen), random_crops(xf, half, c, gen)])
        loss = F.binary_cross_entropy_with_logits(_logits(model, (xb - mu) / sd), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()

    @torch.no_grad()
    def score(x):
        t = tile_crops(x, c)
        n, k = t.shape[:2]
        out = []
        for s in range(0, n * k, 1024):
            out.append(_logits(model, (t.reshape(n * k, 1, c, c)[s:s + 1024] - mu) / sd))
        return torch.cat(out).view(n, k).mean(1)

    return (score(real[te_r]) > 0).numpy(), (score(fake[te_f]) <= 0).numpy()


def _interval(correct: list[tuple[np.ndarray, np.ndarray]], cfg: C2STConfig, seed: int):
    """Two-level bootstrap (seeds, then held-out images per class) of the mean balanced
    accuracy; returns (lo, hi)."""
    rng = np.random.default_rng(seed)
    b = cfg.bootstrap
    per_seed = []
    for cr, cf in correct:
        ar = cr[rng.integers(0, len(cr), (b, len(cr)))].mean(1)
        af = cf[rng.integers(0, len(cf), (b, len(cf)))].mean(1)
        per_seed.append(0.5 * (ar + af))
    per_seed = np.stack(per_seed)  # (S, B)
    pick = rng.integers(0, len(correct), (b, len(correct)))
    boot = per_seed[pick, np.arange(b)[:, None]].mean(1)
    lo, hi = np.quantile(boot, [(1 - cfg.level) / 2, (1 + cfg.level) / 2])
    return float(lo), float(hi)


def c2st(real: torch.Tensor, fake: torch.Tensor, *, real_groups: Sequence | None = None,
         fake_groups: Sequence | None = None, cfg: C2STConfig | None = None,
         classifier: Callable[[int], nn.Module] | None = None, seed: int = 0) -> C2STResult:
    """Held-out accuracy of classifiers trained to tell ``real`` from ``fake`` (module doc).

    Args:
        real: (N_r, 1, H, W) real target-domain images in [-1, 1].
        fake: (N_f, 1, H', W') the method's translations (sizes may differ from real).
        real_groups, fake_groups: a group id per image (subject; None entries: the image
            alone); no group sits on both sides of a split. None: every image its own group.
        cfg: settings (default :class:`C2STConfig`).
        classifier: factory seed -> fresh ``nn.Module`` mapping (B, 1, c, c) to (B,) logits
            (default :class:`TextureCNN`).
        seed: base seed (seed k uses seed + k for its split, initialisation and crops).

    Returns:
        :class:`C2STResult`.

    Raises:
        MedShiftError: bad shapes, NaN, fewer than 2 groups in a set.
    """
    cfg = cfg or C2STConfig()
    classifier = classifier or default_classifier
    t0, c0 = time.perf_counter(), time.process_time()
    real, fake = _check(real, "real"), _check(fake, "fake")
    g_real = _groups(real_groups, real.shape[0], "real")
    g_fake = _groups(fake_groups, fake.shape[0], "fake")
    if real.shape[0] > cfg.max_real:
        keep = sorted({round(k * (real.shape[0] - 1) / (cfg.max_real - 1))
                       for k in range(cfg.max_real)})
        real, g_real = real[torch.tensor(keep)], [g_real[i] for i in keep]
    c = min(cfg.crop, *real.shape[-2:], *fake.shape[-2:])
    correct, accs, sizes = [], [], None
    for k in range(cfg.seeds):
        gen = torch.Generator().manual_seed(seed + k)
        tr_r, te_r = _split(g_real, cfg.holdout, gen, "real")
        tr_f, te_f = _split(g_fake, cfg.holdout, gen, "translated")
        sizes = sizes or ((len(tr_r), len(tr_f)), (len(te_r), len(te_f)))
        cr, cf = _fit_and_score(real, fake, tr_r, te_r, tr_f, te_f, cfg, c, seed + k,
                                classifier)
        correct.append((cr.astype(np.float64), cf.astype(np.float64)))
        accs.append(float(0.5 * (cr.mean() + cf.mean())))
    lo, hi = _interval(correct, cfg, seed)
    return C2STResult(float(np.mean(accs)), lo, hi, accs, sizes[0], sizes[1], c,
                      time.perf_counter() - t0, time.process_time() - c0, asdict(cfg))
