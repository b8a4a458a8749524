"""``medshift evaluate``: score a trained model's translations on the test split.

For each tau: MedShift translation (encode with the source label to tau, decode with the target
label). Baselines on the same images: identity (the source itself), the classical filters of
``baselines.CLASSICAL`` (Gaussian, TV, BM3D; each parameter tuned on the validation split, never
the test split), and on the same model SDEdit-style (noise the source to tau along the path,
decode with the target label) and full inversion (tau = 0). Each row is scored for
  * structure vs the source image: SSIM, PSNR;
  * accuracy vs the pixel-aligned true target (same subject and view; the simulator provides
    it): SSIM, PSNR;
  * distribution vs the target domain (train split as the reference set): FID-ENL0, KID (mean ±
    std over subsets), coverage, density and an RBF MMD on EfficientNet-Lite0 ImageNet
    features (computed once per row);
  * X-ray physics: noise power spectrum distance, intensity-histogram distance and the noise
    level relative to the target domain's; the noise-vs-signal curve's largest deviation from
    the target domain's over the body (``noise_curve``);
  * realism and trust (``realism``): the classifier two-sample test's held-out accuracy with its
    interval (``c2st``; 0.5 = indistinguishable from real target images) and the hallucination
    count and area per image (``hallucination``).
A "true target" row scores the real target images themselves: the floor every metric can reach.
Paired bootstrap intervals (``stats``) compare every learned row with every baseline row.

FID-ENL0 and KID are refused below ``MIN_N_FID`` images unless ``allow_small_n``: with n images
the feature covariance has rank <= n - 1 (of 1280 dimensions), so FID is dominated by its O(1/n)
bias, and KID's subsets (half the set) hold fewer than 8 images per side below 16.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import MedShiftError, option
from ..translate import DEFAULTS, TAU_SWEEP, TranslateOptions, Translator

MIN_N_FID = 16  # fewest images FID-ENL0 / KID are computed on without allow_small_n
ROW_KINDS = ("baseline", "medshift", "student", "classical", "sdedit", "inversion", "oracle")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(TranslateOptions):
    """``medshift evaluate``: score translations on a split against baselines.

    Attributes:
        checkpoint: run directory written by ``medshift train``.
        data: dataset root (ROOT/<domain>/... with manifest.csv for the aligned ground truth).
        out: report folder (report.md, metrics.csv, paired_bootstrap.csv, grid.png, tradeoff.png,
            noise_curve.csv/png, hallucinations.csv).
        taus: translation times to score (comma-separated).
        split: split whose source images are translated.
        reference_split: split of the target domain used as the reference distribution.
        max_images: at most this many source images (default: all).
        batch_size: images per network batch.
        seed: seed of the SDEdit baseline's noise, the KID subsets and the bootstrap.
        baselines: also score the SDEdit-style baseline at every tau.
        inversion: also score full inversion (tau = 0) as a baseline.
        classical: classical baselines, comma-separated (gaussian, tv, bm3d) or none.
        tune_split: split the classical baselines are tuned on (never the test split).
        tune_images: source images of the tuning split used to tune them (BM3D: at most 6).
        bootstrap: paired bootstrap resamples for the method-vs-baseline intervals (0: none).
        allow_small_n: compute FID-ENL0 / KID on fewer than 16 images (noise, not evidence).
        domain_map: FOLDER=DOMAIN,... as given to train (default: the run's stored map).
        c2st: run the classifier two-sample test on every row (its cost: c2st_seeds classifiers
            of c2st_steps steps per row).
        c2st_seeds: C2ST classifiers (seeds) per row.
        c2st_steps: C2ST training steps per classifier.
        c2st_kinds: row kinds the C2ST runs on, comma-separated (baseline, medshift, student,
            classical, sdedit, inversion, oracle) or all.
        hallucination: count new compact structures (translation vs its source) per image.
        grid_rows: source images shown in grid.png.
        progress: show progress bars and per-method lines.
    """

    checkpoint: str
    data: str
    out: str
    taus: tuple[float, ...] = TAU_SWEEP
    split: str = "test"
    reference_split: str = "train"
    max_images: int | None = None
    batch_size: int = 32
    seed: int = DEFAULTS["seed"]
    baselines: bool = True
    inversion: bool = True
    classical: str = "gaussian,tv,bm3d"
    tune_split: str = "val"
    tune_images: int = 12
    bootstrap: int = 1000
    allow_small_n: bool = False
    domain_map: str | None = None
    c2st: bool = True
    c2st_seeds: int = 3
    c2st_steps: int = 200
    c2st_kinds: str = "all"
    hallucination: bool = True
    grid_rows: int = 6
    progress: bool = True

    def __post_init__(self) -> None:
        from .baselines import parse_classical

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
        if self.tune_images < 1 or self.bootstrap < 0:
            raise MedShiftError(f"tune_images must be >= 1 and bootstrap >= 0, got "
                                f"{self.tune_images}, {self.bootstrap}")
        if self.c2st:
            self.c2st_config()  # bad seeds / steps fail now, before any work
        bad = set(self.c2st_kind_set()) - set(ROW_KINDS)
        if bad:
            raise MedShiftError(f"--c2st-kinds: unknown row kind(s) {', '.join(sorted(bad))}; "
                                f"choose from {', '.join(ROW_KINDS)} or all")
        parse_classical(self.classical)  # unknown names fail now, before any work
        if parse_classical(self.classical) and self.tune_split == self.split:
            raise MedShiftError(f"--tune-split {self.tune_split} is the evaluated split: the "
                                "classical baselines must be tuned on another (e.g. val)")


    def c2st_kind_set(self) -> tuple[str, ...]:
        """The row kinds the C2ST runs on."""
        v = self.c2st_kinds.strip()
        return ROW_KINDS if v == "all" else tuple(k.strip() for k in v.split(",") if k.strip())

    def c2st_config(self):
        """The C2ST settings of this evaluation (None when ``c2st`` is off)."""
        from .c2st import C2STConfig

        return C2STConfig(seeds=self.c2st_seeds, steps=self.c2st_steps) if self.c2st else None


@dataclass
class EvalResult:
    """Rows (one dict per method), images per method, settings, timing, bootstrap intervals,
    the noise-vs-signal curves (one dict per row and signal bin) and the hallucination counts
    (one dict per row and image)."""

    rows: list[dict] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    bootstrap: list[dict] = field(default_factory=list)
    noise_curves: list[dict] = field(default_factory=list)
    hallucinations: list[dict] = field(default_factory=list)


def _translate_all(fn, x, batch_size, progress, desc):
    from tqdm.auto import tqdm

    outs = []
    for k in tqdm(range(0, x.shape[0], batch_size), disable=not progress, desc=desc, leave=False):
        outs.append(fn(x[k : k + batch_size]).clamp(-1, 1))
    return torch.cat(outs)


def check_sample_size(n: int, n_reference: int, allow_small_n: bool, *, n_split: int | None = None,
                      split: str = "test", reference_split: str = "train") -> None:
    """Refuse FID-ENL0 / KID on fewer than ``MIN_N_FID`` images unless allowed, naming what
    to pass: ``n`` images scored (``n_split`` in the split before ``max_images``), and
    ``n_reference`` reference images."""
    m = min(n, n_reference)
    if m >= MIN_N_FID or allow_small_n:
        return
    fixes = []
    if n <= n_reference:
        which = f"{split} images"
        avail = n if n_split is None else n_split
        if n < avail and option("max_images"):
            k = str(min(avail, MIN_N_FID))
            fixes.append(f"raise {option('max_images', k, k)} (the {split} split holds "
                         f"{avail})")
        if avail < MIN_N_FID:
            fixes.append(f"add images to the {split} split"
                         + (f" or score another ({option('split', 'SPLIT', repr('val'))})"
                            if option("split") else ""))
    else:
        which = f"reference images ({reference_split} split)"
        if option("reference_split"):
            fixes.append(f"use a larger reference split "
                         f"({option('reference_split', 'SPLIT', repr('train'))})")
    small = option("allow_small_n")
    if small:
        fixes.append(f"pass {small} to compute them anyway")
    raise MedShiftError(f"FID-ENL0/KID on n = {m} {which} would be noise (minimum "
                        f"{MIN_N_FID}); " + ("; ".join(fixes) or "score more images"))


def _kid_subset(n: int, n_ref: int) -> int:
    # half the smaller set, so the subset std reflects the sampling of both sets
    return max(2, min(1000, min(n, n_ref) // 2))


def evaluate(cfg: EvalConfig, progress: bool | None = None, run=None,
             extra_methods=()) -> EvalResult:
    """Run the evaluation and write OUT/report.md, metrics.csv, paired_bootstrap.csv, grid.png,
    tradeoff.png.

    Args:
        cfg: the settings.
        progress: override ``cfg.progress``.
        run: an already loaded run (default: load ``cfg.checkpoint``).
        extra_methods: more rows: (name, kind, tau, Translator-like callable on pixel batches);
            kind "student" rows are judged like the MedShift rows (Pareto verdicts, bootstrap).
    """
    from .. import eval as E
    from ..run import load_run
    from . import _data, report, stats
    from .baselines import parse_classical, tune_all

    progress = cfg.progress if progress is None else progress
    t_start = time.perf_counter()
    run = run or load_run(cfg.checkpoint)
    src, tgt = run.label(cfg.source), run.label(cfg.target)
    if src == tgt:
        raise MedShiftError("source and target domains are the same; pick two different ones")
    size = run.image_size
    dmap = cfg.domain_map if cfg.domain_map is not None else run.train.get("domain_map")
    classical = parse_classical(cfg.classical)

    def translator(tau, method=None, baseline=None):
        try:
            return Translator(run, src, tgt, tau=tau, method=method, seed=cfg.seed,
                              batch_size=cfg.batch_size, **cfg.recipe()).translate
        except MedShiftError as exc:
            if baseline is None:
                raise
            no = option("no_baselines", py="False", keyword="baselines")
            raise MedShiftError(f"{exc} (the {baseline} baseline, which evaluate scores by "
                                "default)" + (f"; pass {no} to leave the baselines out" if no
                                              else "")) from None

    # every translation row is built, and so checked, before any data is read
    rows_medshift = [(f"MedShift τ={tau:g}", "medshift", tau, translator(tau))
                     for tau in cfg.taus]
    rows_baseline = []
    if cfg.baselines:
        rows_baseline += [(f"SDEdit τ={tau:g}", "sdedit", tau,
                           translator(tau, "sdedit", baseline="SDEdit")) for tau in cfg.taus]
        if cfg.inversion:
            rows_baseline.append(("inversion τ=0", "inversion", 0.0,
                                  translator(0.0, baseline="inversion (tau = 0)")))
    n_src = _data.count_split(cfg.data, cfg.source, cfg.split, dmap)
    check_sample_size(min(n_src, cfg.max_images or n_src),
                      _data.count_split(cfg.data, cfg.target, cfg.reference_split, dmap),
                      cfg.allow_small_n, n_split=n_src, split=cfg.split,
                      reference_split=cfg.reference_split)
    s_set = _data.load_domain(cfg.data, cfg.source, cfg.split, size, cfg.max_images, dmap)
    x_src = s_set.x
    x_gt = _data.align(s_set, _data.load_domain(cfg.data, cfg.target, cfg.split, size,
                                                domain_map=dmap))
    has_gt = x_gt is not None
    r_set = _data.load_domain(cfg.data, cfg.target, cfg.reference_split, size, domain_map=dmap)
    x_ref = r_set.x
    nps_ref = E.noise_power_spectrum(x_ref)
    t0 = time.perf_counter()
    tuned = tune_all(classical, cfg.data, cfg.source, cfg.target, split=cfg.tune_split,
                     size=size, max_images=cfg.tune_images, domain_map=dmap, reference=nps_ref,
                     progress=progress)
    t_tune = time.perf_counter() - t0

    methods: list[tuple[str, str, float | None, object]] = [
        ("identity", "baseline", None, lambda x: x)
    ]
    methods += rows_medshift
    methods += list(extra_methods)
    methods += [(t.method, "classical", None, t.translate) for t in tuned]
    methods += rows_baseline

    from .realism import Judges

    judges = Judges(x_ref, r_set.groups(), cfg.c2st_config(), cfg.seed, cfg.hallucination)
    groups = s_set.groups()  # the aligned true target views share the source's subjects
    c2st_kinds = cfg.c2st_kind_set()
    fx = E.ENL0Features(batch_size=64)
    f_ref = fx(x_ref, progress="ENL0 features (reference)" if progress else False)
    noise_ref = float(E.noise_level(x_ref, reduction="mean"))
    n, n_ref = int(x_src.shape[0]), int(x_ref.shape[0])
    res = EvalResult()
    timing = {"classical_tuning": t_tune}
    rows, samples = [], {}
    candidates = [("true target", "oracle", None, None)] if has_gt else []
    kinds = {t.method: t.baseline.key for t in tuned}
    for name, kind, tau, fn in methods + candidates:
        t0 = time.perf_counter()
        y = x_gt if kind == "oracle" else _translate_all(fn, x_src, cfg.batch_size, progress,
                                                         name)
        dt = time.perf_counter() - t0
        timing[name] = dt
        res.images[name] = y
        f_y = fx(y)
        fm = _feature_metrics(f_y, f_ref, cfg.seed)
        ssim_src = E.ssim(y, x_src, reduction="none")
        psnr_tgt = E.psnr(y, x_gt, reduction="none") if has_gt else None
        nps_img = stats.per_image_nps(y)
        row = {
            "method": name,
            "kind": kind,
            "tau": "" if tau is None else tau,
            "n": n,
            "ssim_src": float(ssim_src.mean()),
            "psnr_src": _finite(E.psnr(y, x_src)),
            "ssim_tgt": float(E.ssim(y, x_gt)) if has_gt else float("nan"),
            "psnr_tgt": _finite(psnr_tgt.mean()) if has_gt else float("nan"),
            **fm,
            "nps_dist": float(E.nps_distance(y, nps_ref)),
            "hist_dist": float(E.histogram_distance(y, x_ref)),
            "noise_ratio": float(E.noise_level(y, reduction="mean")) / max(noise_ref, 1e-12),
            **judges.row(name, y, groups, x_src, run_c2st=kind in c2st_kinds,
                         image_ids=s_set.paths),
            "sec_per_image": dt / max(1, y.shape[0]) if kind != "oracle" else 0.0,
        }
        if kind == "classical":
            row["baseline"] = kinds[name]
        rows.append(row)
        if cfg.bootstrap and kind != "oracle":
            samples[name] = {
                "psnr_tgt": psnr_tgt.double().numpy() if has_gt else None,
                "ssim_src": ssim_src.double().numpy(),
                "fid_enl0": stats.FIDStat(f_y, f_ref) if n >= 2 else None,
                "kid": stats.KIDStat(f_y, f_ref) if n >= 2 else None,
                "nps_dist": stats.NPSStat(nps_img, nps_ref.nps.numpy()),
            }
        if progress:
            print(
                f"  {name:18s} SSIM(src) {row['ssim_src']:.3f}  FID-ENL0 {row['fid_enl0']:.3f}"
                f"  NPS-dist {row['nps_dist']:.3f}  noise x{row['noise_ratio']:.2f}"
                f"  C2ST {row['c2st_acc']:.2f}  noise(s) ±{row['noise_curve_dev']:.2f}"
                f"  halluc/img {row['halluc_count']:.2f}  {row['sec_per_image']:.3f} s/img",
                flush=True,
            )
    res.rows = rows
    res.noise_curves = judges.curve_rows()
    res.hallucinations = judges.per_image
    timing.update({f"{k}_s": v for k, v in judges.seconds.items()})
    res.images["source"] = x_src
    if has_gt:
        res.images["target (true)"] = x_gt
    if cfg.bootstrap:
        t0 = time.perf_counter()
        learned = [r["method"] for r in rows if r["kind"] in ("medshift", "student")]
        rivals = [r["method"] for r in rows
                  if r["kind"] in ("baseline", "classical", "sdedit", "inversion")]
        res.bootstrap = stats.paired_bootstrap(samples, [(a, b) for a in learned for b in rivals],
                                               resamples=cfg.bootstrap, seed=cfg.seed)
        timing["bootstrap"] = time.perf_counter() - t0
    res.settings = {
        **asdict(cfg),
        **{k: v for k, v in translator(cfg.taus[0]).__self__.settings.to_dict().items()
           if k in cfg.recipe()},
        "n_images": n,
        "n_reference": n_ref,
        "min_n_fid": MIN_N_FID,
        "kid_subset_size": _kid_subset(n, n_ref),
        "image_size": size,
        "domains": list(run.domains),
        "domain_map_used": dmap,
        "aligned_ground_truth": has_gt,
        "default_tau": float(DEFAULTS["tau"]),
        "c2st_config": cfg.c2st_config() and asdict(cfg.c2st_config()),
        "noise_curve_edges": [float(e) for e in judges.edges],
        "classical_tuning": [t.to_dict() for t in tuned],
        "preset": run.train.get("preset"),
        "train_steps": run.config.get("step", run.train.get("steps")),
    }
    timing["total_s"] = time.perf_counter() - t_start
    res.timing = timing
    report.write_all(Path(cfg.out), res)
    return res


def _feature_metrics(f_y: torch.Tensor, f_ref: torch.Tensor, seed: int) -> dict:
    from .distribution import feature_metrics

    keys = ("fid_enl0", "kid", "kid_std", "coverage", "density", "mmd")
    if f_y.shape[0] < 2:  # only reachable with allow_small_n: nothing to fit a covariance to
        return dict.fromkeys(keys, float("nan"))
    fm = feature_metrics(f_y, f_ref, seed=seed,
                         kid_subset_size=_kid_subset(f_y.shape[0], f_ref.shape[0]))
    return {k: fm[k] for k in keys}


def _finite(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else 99.0
