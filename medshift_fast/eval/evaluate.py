"""``medshift evaluate``: score a trained model's translations on the test split.

For each tau: MedShift translation (encode with the source label to tau, decode with the target
label). Baselines on the same model and images: identity (the source itself), SDEdit-style
(noise the source to tau along the path, decode with the target label) and full inversion
(tau = 0). Each row is scored for
  * structure vs the source image: SSIM, PSNR;
  * accuracy vs the pixel-aligned true target (same subject and view; the simulator provides
    it): SSIM, PSNR;
  * distribution vs the target domain (train split as the reference set): FID-ENL0, KID,
    coverage, density and an RBF MMD on EfficientNet-Lite0 ImageNet features;
  * X-ray physics: noise power spectrum distance, intensity-histogram distance and the noise
    level relative to the target domain's.
A "true target" row scores the real target images themselves: the floor every metric can reach.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..translator import TranslateOptions, Translator


@dataclass(frozen=True, kw_only=True)
class EvalConfig(TranslateOptions):
    """``medshift evaluate``: score translations on a split against baselines.

    Attributes:
        checkpoint: run directory written by ``medshift train``.
        data: dataset root (ROOT/<domain>/... with manifest.csv for the aligned ground truth).
        out: report folder (report.md, metrics.csv, grid.png, tradeoff.png).
        taus: translation times to score (comma-separated).
        split: split whose source images are translated.
        reference_split: split of the target domain used as the reference distribution.
        max_images: at most this many source images (default: all).
        batch_size: images per network batch.
        seed: seed of the SDEdit baseline's noise and the KID subsets.
        baselines: also score the SDEdit-style baseline at every tau.
        inversion: also score full inversion (tau = 0) as a baseline.
        grid_rows: source images shown in grid.png.
        progress: show progress bars and per-method lines.
    """

    checkpoint: str
    data: str
    out: str
    taus: tuple[float, ...] = (0.3, 0.45, 0.6)
    split: str = "test"
    reference_split: str = "train"
    max_images: int | None = None
    batch_size: int = 32
    seed: int = 0
    baselines: bool = True
    inversion: bool = True
    grid_rows: int = 6
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "taus", tuple(float(t) for t in self.taus))
        if not self.source or not self.target:
            raise MedShiftError("evaluate needs --source and --target domain names")
        if not self.taus or any(not (math.isfinite(t) and 0.0 <= t <= 1.0) for t in self.taus):
            raise MedShiftError(f"taus must be in [0, 1], got {self.taus}")
        if self.batch_size < 1:
            raise MedShiftError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise MedShiftError(f"max_images must be >= 1, got {self.max_images}")


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)


def _load_domain(data, domain, split, size, max_images=None):
    from ..data import FolderDataset

    ds = FolderDataset(data, size=size, split=split, domains=(domain,))
    idx = list(range(len(ds)))
    if max_images is not None and max_images < len(idx):  # spread over subjects and views
        idx = sorted({round(k * (len(idx) - 1) / max(1, max_images - 1))
                      for k in range(max_images)})
    x = torch.stack([ds[i][0] for i in idx])
    keys = [(ds.samples[i].subject, ds.samples[i].view_id) for i in idx]
    return x, keys


def _view_key(subject, view_id):
    # Views are named per subject (e.g. s003_v02) and are shared across domains.
    return view_id if view_id is not None else None


def _translate_all(fn, x, batch_size, progress, desc):
    from tqdm.auto import tqdm

    outs = []
    for k in tqdm(range(0, x.shape[0], batch_size), disable=not progress, desc=desc, leave=False):
        outs.append(fn(x[k : k + batch_size]).clamp(-1, 1))
    return torch.cat(outs)


def evaluate(cfg: EvalConfig, progress: bool | None = None, run=None,
             extra_methods=()) -> EvalResult:
    """Run the evaluation and write OUT/report.md, metrics.csv, grid.png, tradeoff.png.

    Args:
        cfg: the settings.
        progress: override ``cfg.progress``.
        run: an already loaded run (default: load ``cfg.checkpoint``).
        extra_methods: more rows: (name, kind, tau, Translator-like callable on pixel batches).
    """
    from .. import eval as E
    from ..run import load_run
    from . import report

    progress = cfg.progress if progress is None else progress
    t_start = time.perf_counter()
    run = run or load_run(cfg.checkpoint)
    src, tgt = run.label(cfg.source), run.label(cfg.target)
    if src == tgt:
        raise MedShiftError("source and target domains are the same; pick two different ones")
    size = run.image_size
    x_src, src_keys = _load_domain(cfg.data, cfg.source, cfg.split, size, cfg.max_images)
    x_tgt_test, tgt_keys = _load_domain(cfg.data, cfg.target, cfg.split, size)
    x_ref, _ = _load_domain(cfg.data, cfg.target, cfg.reference_split, size)
    # pixel-aligned ground truth: same view id in the target domain
    by_key = {_view_key(*k): i for i, k in enumerate(tgt_keys) if _view_key(*k) is not None}
    aligned = [by_key.get(_view_key(*k)) for k in src_keys]
    has_gt = all(a is not None for a in aligned)
    x_gt = x_tgt_test[torch.tensor(aligned)] if has_gt else None

    def translator(tau, method="medshift"):
        return Translator(run, src, tgt, tau=tau, method=method, seed=cfg.seed,
                          batch_size=cfg.batch_size, **cfg.recipe()).translate

    methods: list[tuple[str, str, float | None, object]] = [
        ("identity", "baseline", None, lambda x: x)
    ]
    methods += [(f"MedShift τ={tau:g}", "medshift", tau, translator(tau)) for tau in cfg.taus]
    methods += list(extra_methods)
    if cfg.baselines:
        methods += [(f"SDEdit τ={tau:g}", "sdedit", tau, translator(tau, "sdedit"))
                    for tau in cfg.taus]
        if cfg.inversion:
            methods.append(("inversion τ=0", "inversion", 0.0, translator(0.0)))

    fx = E.ENL0Features(batch_size=64)
    f_ref = fx(x_ref, progress="ENL0 features (reference)" if progress else False)
    nps_ref = E.noise_power_spectrum(x_ref)
    noise_ref = float(E.noise_level(x_ref, reduction="mean"))
    res = EvalResult()
    timing = {}
    rows = []
    candidates = [("true target", "oracle", None, None)] if has_gt else []
    for name, kind, tau, fn in methods + candidates:
        t0 = time.perf_counter()
        if kind == "oracle":
            y = x_gt
        else:
            y = _translate_all(fn, x_src, cfg.batch_size, progress, name)
        dt = time.perf_counter() - t0
        timing[name] = dt
        res.images[name] = y
        f_y = fx(y)
        fm = E.feature_metrics(
            f_y, f_ref, seed=cfg.seed, kid_subset_size=min(1000, len(f_y), len(f_ref))
        )
        row = {
            "method": name,
            "kind": kind,
            "tau": "" if tau is None else tau,
            "ssim_src": float(E.ssim(y, x_src)),
            "psnr_src": _finite(E.psnr(y, x_src)),
            "ssim_tgt": float(E.ssim(y, x_gt)) if has_gt else float("nan"),
            "psnr_tgt": _finite(E.psnr(y, x_gt)) if has_gt else float("nan"),
            "fid_enl0": fm["fid_enl0"],
            "kid": fm["kid"],
            "coverage": fm["coverage"],
            "density": fm["density"],
            "mmd": fm["mmd"],
            "nps_dist": float(E.nps_distance(y, nps_ref)),
            "hist_dist": float(E.histogram_distance(y, x_ref)),
            "noise_ratio": float(E.noise_level(y, reduction="mean")) / max(noise_ref, 1e-12),
            "sec_per_image": dt / max(1, y.shape[0]) if kind != "oracle" else 0.0,
        }
        rows.append(row)
        if progress:
            print(
                f"  {name:18s} SSIM(src) {row['ssim_src']:.3f}  FID-ENL0 {row['fid_enl0']:.3f}"
                f"  NPS-dist {row['nps_dist']:.3f}  noise x{row['noise_ratio']:.2f}",
                flush=True,
            )
    res.rows = rows
    res.images["source"] = x_src
    if has_gt:
        res.images["target (true)"] = x_gt
    res.settings = {
        **asdict(cfg),
        **{k: v for k, v in translator(cfg.taus[0]).__self__.settings.to_dict().items()
           if k in cfg.recipe()},
        "n_images": int(x_src.shape[0]),
        "n_reference": int(x_ref.shape[0]),
        "image_size": size,
        "domains": list(run.domains),
        "aligned_ground_truth": has_gt,
        "preset": run.train.get("preset"),
        "train_steps": run.config.get("step", run.train.get("steps")),
    }
    timing["total_s"] = time.perf_counter() - t_start
    res.timing = timing
    report.write_all(Path(cfg.out), res)
    return res


def _finite(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else 99.0
