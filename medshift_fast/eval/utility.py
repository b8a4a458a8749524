"""``medshift utility``: does a translation make synthetic data train models that work on real
images? The sim-to-real utility benchmark (docs/utility.md).

One small downstream network (``models.taskunet``, trained by ``downstream.train_task`` for a
fixed budget of steps) is trained on the labelled ``train`` views of the source domain under
each condition, ``seeds`` times, and scored on the labelled ``test`` views of the target
domain (new subjects: ``utility_data.check_disjoint``):

* ``synthetic``: the source images as they are (the lower bound);
* ``translated``: the source images translated by the run (``--checkpoint``) at each tau (one
  ``Translator``, in fixed chunks on one thread each, image i with a generator seeded by
  (seed, i): the result depends neither on the batch nor on the number of workers), and by
  ``--teacher`` at ``teacher_taus`` when given;
* ``classical``: histogram matching + measured noise + detector blur (``sim2real``), fitted on
  the validation split only;
* ``randomized``: the source images with strong domain randomisation during training;
* ``translated+randomized``: the translation at ``combo_tau`` with the same randomisation;
* ``oracle``: the target domain's own labelled train views (the same views, for the
  simulator's pixel-aligned data; the upper bound).

Every condition trains on the same labels; the scores (MAE in the label's units for
regression, Dice for segmentation) get bootstrap intervals over the test views, the spread over
seeds, and gap closed = (condition - synthetic) / (oracle - synthetic) (``utility_report``).

Caching: translated training sets and finished trainings are stored in ``cache`` (default
OUT/cache) under a key of everything they depend on (the run's weight hash and settings, a hash
of the input images and labels, the budget, the seed), so a rerun only scores and reports.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..translate.settings import DEFAULTS, TAU_SWEEP
from .utility_report import MARKER, UtilityResult

CONDITIONS = ("synthetic", "translated", "classical", "randomized", "translated+randomized",
              "oracle")
# The demo's budget (``medshift demo``'s utility section, <= ~3 min on 2 CPU threads): the
# default tau only, 400 steps per training, two training processes.
DEMO = {"taus": (DEFAULTS["tau"],), "combo_tau": DEFAULTS["tau"], "steps": 400, "seeds": 3,
        "workers": 2}


@dataclass(frozen=True, kw_only=True)
class UtilityConfig:
    """``medshift utility``: train a small network on synthetic views under each sim-to-real
    condition and score it on real test views of new subjects.

    Attributes:
        checkpoint: the translation run (a teacher or a distilled student run directory).
        data: dataset root with labels (``medshift simulate`` writes them; else
            ROOT/labels/<domain>/<name>.tif|png|npy).
        source: domain of the labelled training images (e.g. synthetic_low).
        target: domain of the test images (e.g. real_normal).
        out: output folder (report.md, metrics.csv, per_seed.csv, predictions.png,
            utility.json).
        taus: translation times of the translated conditions (comma-separated).
        combo_tau: translation time of the translated + randomised condition.
        conditions: which conditions to run (comma-separated; synthetic, translated,
            classical, randomized, translated+randomized, oracle).
        task: regression (a float label map: MAE) or segmentation (a mask: Dice).
        label: the label channel to learn (simulator labels: bone_mm, soft_mm, bone_mask).
        seeds: training seeds per condition.
        pool: the downstream task works on views binned pool x pool (area mean of the images
            and of the labels; a mask is then >= 0.5 of the bin), after translation at the
            native size: fewer pixels per step for the same anatomy (1: native size).
        steps: optimiser steps per training (the fixed budget).
        batch_size: crops per step.
        crop: training crop side in pixels (0: whole images).
        lr: peak learning rate.
        widths: U-Net channels per level (comma-separated).
        train_split: split of the labelled training views.
        tune_split: split the classical route is fitted on (never the test split).
        test_split: split of the target-domain test views.
        max_train_images: at most this many training views (default: all).
        min_test_images: refuse fewer test views than this (an interval on fewer is noise).
        teacher: a second run (e.g. the teacher of --checkpoint) translated at teacher_taus.
        teacher_taus: translation times of the teacher rows.
        bootstrap: bootstrap resamples over the test views.
        seed: seed of the translation and classical noise and of the bootstrap (training
            seeds are 0 .. seeds-1).
        workers: training processes in parallel (one thread each; results do not depend on
            it).
        cache: cache folder for translations and trainings (default: OUT/cache).
        domain_map: FOLDER=DOMAIN,... as given to train (default: the run's stored map).
        overwrite: replace a previous utility output in out.
        progress: show progress bars (stage lines are printed either way).
    """

    checkpoint: str
    data: str
    source: str
    target: str
    out: str
    taus: tuple[float, ...] = (TAU_SWEEP[0], DEFAULTS["tau"])
    combo_tau: float = DEFAULTS["tau"]
    conditions: tuple[str, ...] = CONDITIONS
    task: str = "regression"
    label: str = "bone_mm"
    seeds: int = 3
    pool: int = 2
    steps: int = 1200
    batch_size: int = 8
    crop: int = 32
    lr: float = 5e-3
    widths: tuple[int, ...] = (16, 32, 64)
    train_split: str = "train"
    tune_split: str = "val"
    test_split: str = "test"
    max_train_images: int | None = None
    min_test_images: int = 48
    teacher: str | None = None
    teacher_taus: tuple[float, ...] = (DEFAULTS["tau"],)
    bootstrap: int = 1000
    seed: int = DEFAULTS["seed"]
    workers: int = 1
    cache: str | None = None
    domain_map: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from .downstream import TASKS

        def bad(msg):
            raise MedShiftError(f"utility: {msg}")

        for name in ("taus", "teacher_taus"):
            v = tuple(float(t) for t in getattr(self, name))
            object.__setattr__(self, name, v)
            if any(not (math.isfinite(t) and 0.0 <= t <= 1.0) for t in v):
                bad(f"--{name.replace('_', '-')} must lie in [0, 1], got {v}")
        conds = tuple(str(c).strip() for c in self.conditions if str(c).strip())
        object.__setattr__(self, "conditions", conds)
        unknown = [c for c in conds if c not in CONDITIONS]
        if unknown or not conds:
            bad(f"unknown condition(s) {', '.join(unknown) or '(none)'}; choose from "
                f"{', '.join(CONDITIONS)}")
        if "translated" in conds and not self.taus:
            bad("the translated condition needs at least one --taus value")
        if not 0.0 <= self.combo_tau <= 1.0:
            bad(f"--combo-tau must lie in [0, 1], got {self.combo_tau}")
        if self.task not in TASKS:
            bad(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.seeds < 1 or self.workers < 1 or self.bootstrap < 0 or self.min_test_images < 1 \
                or self.pool < 1:
            bad("--seeds, --workers, --pool, --min-test-images must be >= 1 and --bootstrap "
                ">= 0")
        if self.max_train_images is not None and self.max_train_images < 1:
            bad(f"--max-train-images must be >= 1, got {self.max_train_images}")
        if self.tune_split == self.test_split or self.train_split == self.test_split:
            bad(f"the train ({self.train_split}) and tuning ({self.tune_split}) splits must "
                f"differ from the test split ({self.test_split})")
        if self.source == self.target:
            bad("--source and --target are the same domain; pick two")
        self.budget()  # validates steps, crop, widths

    def budget(self):
        from .downstream import TaskBudget

        return TaskBudget(steps=self.steps, batch_size=self.batch_size, crop=self.crop,
                          lr=self.lr, widths=self.widths)


@dataclass
class Condition:
    """One training condition: its name, what it trains on and how."""

    name: str
    key: str
    x: torch.Tensor
    y: torch.Tensor
    randomize: bool = False
    tau: float | None = None


def _is_previous(out: Path) -> bool:
    from ..fileio import folder_entries

    own = {MARKER, "report.md", "metrics.csv", "per_seed.csv", "predictions.png", "cache"}
    return (out / MARKER).is_file() and all(n in own for n in folder_entries(out))


def _check_out(cfg: UtilityConfig) -> bool:
    """The output-safety rule (``fileio.check_output_folder``), checked before any work."""
    from ..fileio import check_not_inside, check_output_folder

    out = Path(cfg.out)
    check_not_inside(out, [Path(cfg.data), Path(cfg.checkpoint)])
    return check_output_folder(out, command="utility", is_previous=_is_previous,
                               overwrite=cfg.overwrite)


def _prepare_out(cfg: UtilityConfig, previous: bool) -> Path:
    """Remove a previous output's files (not its cache) and write the marker."""
    from ..fileio import atomic_write_text

    out = Path(cfg.out)
    if previous:
        for n in (MARKER, "report.md", "metrics.csv", "per_seed.csv", "predictions.png"):
            if (out / n).exists():
                (out / n).unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"config": asdict(cfg), "complete": False},
                                               indent=1, default=str) + "\n")
    return out


def utility(cfg: UtilityConfig, progress: bool | None = None, log=None) -> UtilityResult:
    """Run the benchmark and write its report (module docstring); returns the result.

    Args:
        cfg: the settings.
        progress: override ``cfg.progress`` (bars; stage lines go to ``log`` either way).
        log: one-line stage messages (default: print).
    """
    from ..run import load_run
    from ..translate import Translator
    from . import utility_data as D
    from .downstream import bin_views, check_size
    from .utility_report import write_report
    from .utility_run import label_scale, run_hash, train_all, translated

    progress = cfg.progress if progress is None else progress
    log = log or (lambda m: print(m, flush=True))
    t_all = time.perf_counter()
    timing: dict[str, float] = {}
    if not Path(cfg.checkpoint).is_dir():
        raise MedShiftError(f"utility: --checkpoint {cfg.checkpoint!r} is not a run folder")
    previous = _check_out(cfg)
    # ---- everything that can fail, before any work
    run = load_run(cfg.checkpoint)
    dmap = cfg.domain_map if cfg.domain_map is not None else run.train.get("domain_map")
    need = set(cfg.conditions)
    translators = {}
    taus = list(cfg.taus) if "translated" in need else []
    if "translated+randomized" in need and cfg.combo_tau not in taus:
        taus.append(cfg.combo_tau)
    for tau in taus:
        translators[("translated", tau)] = Translator(run, cfg.source, cfg.target, tau=tau,
                                                      seed=cfg.seed)
    teacher = load_run(cfg.teacher) if cfg.teacher else None
    for tau in cfg.teacher_taus if teacher is not None else ():
        translators[("teacher", tau)] = Translator(teacher, cfg.source, cfg.target, tau=tau,
                                                   seed=cfg.seed)
    kind = "map" if cfg.task == "regression" else "mask"
    lab = dict(domain_map=dmap, channel=cfg.label, kind=kind)
    src = D.load_set(cfg.data, cfg.source, cfg.train_split, max_images=cfg.max_train_images,
                     **lab)
    test = D.load_set(cfg.data, cfg.target, cfg.test_split, **lab)
    sets = [src, test]
    if len(test) < cfg.min_test_images:
        raise MedShiftError(f"utility: only {len(test)} {cfg.target} {cfg.test_split} views; "
                            f"scores on fewer than {cfg.min_test_images} are noise - add test "
                            "views or lower --min-test-images")
    oracle = None
    if "oracle" in need:
        oracle = D.load_set(cfg.data, cfg.target, cfg.train_split,
                            max_images=cfg.max_train_images, **lab)
        sets.append(oracle)
    val = None
    if "classical" in need:
        val = (D.load_set(cfg.data, cfg.source, cfg.tune_split, domain_map=dmap),
               D.load_set(cfg.data, cfg.target, cfg.tune_split, domain_map=dmap))
        sets += list(val)
    D.check_same_size(*sets)
    check_size(*src.x.shape[-2:], cfg.pool, cfg.budget())
    D.check_disjoint([s for s in (src, oracle, *(val or ())) if s is not None], test)
    out = _prepare_out(cfg, previous)
    log(f"[utility] {len(src)} labelled {cfg.source} {cfg.train_split} views, {len(test)} "
        f"{cfg.target} {cfg.test_split} views (new subjects); {len(cfg.conditions)} condition "
        f"kind(s) x {cfg.seeds} seeds, {cfg.steps} steps each")
    cache = Path(cfg.cache) if cfg.cache else out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    # ---- the training sets of the conditions
    conds: list[Condition] = []
    if "synthetic" in need:
        conds.append(Condition("synthetic (as is)", "synthetic", src.x, src.y))
    made = {}
    for (who, tau), tr in translators.items():
        t0 = time.perf_counter()
        made[(who, tau)] = translated(tr, src.x, run if who == "translated" else teacher,
                                       cfg, cache, progress, f"{who} τ={tau:g}")
        timing[f"{who}_tau{tau:g}_s"] = time.perf_counter() - t0
        log(f"[utility] {who} τ={tau:g}: {len(src)} training views "
            f"({timing[f'{who}_tau{tau:g}_s']:.0f} s)")
        if who == "teacher" or tau in cfg.taus and "translated" in need:
            name = f"{'translated' if who == 'translated' else 'teacher'} τ={tau:g}"
            conds.append(Condition(name, who, made[(who, tau)], src.y, tau=tau))
    classical = None
    if "classical" in need:
        from .sim2real import MatchNoiseBlur

        t0 = time.perf_counter()
        classical = MatchNoiseBlur.fit(val[0].x, val[1].x, split=cfg.tune_split, seed=cfg.seed)
        conds.append(Condition("hist-match + noise + blur", "classical",
                               classical.apply(src.x, seed=cfg.seed), src.y))
        timing["classical_fit_s"] = time.perf_counter() - t0
        log(f"[utility] classical route fitted on {cfg.tune_split}: blur {classical.blur:g} px "
            f"({timing['classical_fit_s']:.0f} s)")
    if "randomized" in need:
        conds.append(Condition("domain randomisation", "randomized", src.x, src.y, True))
    if "translated+randomized" in need:
        conds.append(Condition(f"translated τ={cfg.combo_tau:g} + randomisation",
                               "translated+randomized", made[("translated", cfg.combo_tau)],
                               src.y, True, cfg.combo_tau))
    if oracle is not None:
        conds.append(Condition("real (oracle)", "oracle", oracle.x, oracle.y))
    # how close each condition's training images are to the real renderings of the same views
    psnr_real = {}
    if oracle is not None and D.aligned(src, oracle):
        from .image import psnr

        psnr_real = {c.name: float(psnr(c.x, oracle.x)) for c in conds
                     if not c.randomize and c.key != "oracle"}
    # ---- training and scoring
    t0 = time.perf_counter()
    per_seed, fig, shown = train_all(conds, test, cfg, cache, progress, log)
    timing["train_s"] = time.perf_counter() - t0
    settings = {**asdict(cfg), "run": str(run.path), "run_kind": run.kind,
                "run_sha256": run_hash(run), "n_train": len(src), "n_test": len(test),
                "image_size": list(src.x.shape[-2:]), "budget": cfg.budget().to_dict(),
                "scale": label_scale(bin_views(src.y, cfg.pool, cfg.task == "segmentation"),
                                cfg.task),
                "test_subjects": sorted({s for s in test.subjects if s is not None}),
                "classical": classical.to_dict() if classical is not None else None,
                "translation": {f"{w} τ={t:g}": tr.describe() for (w, t), tr in
                                translators.items()},
                "oracle_same_views": bool(oracle is not None and D.aligned(src, oracle)),
                "psnr_vs_real_db": psnr_real}
    timing["total_s"] = time.perf_counter() - t_all
    res = write_report(out, per_seed, test, shown, fig, settings, timing, cfg)
    log(f"[utility] report written to {out}/report.md ({timing['total_s']:.0f} s)")
    return res


def demo_section(run_dir, data, out, *, progress: bool = False, log=None,
                 **over) -> tuple[list[str], float]:
    """The demo's utility section: the benchmark at the ``DEMO`` budget, synthetic_low ->
    real_normal, on the demo's evaluation data; (markdown lines, seconds).

    Args:
        run_dir: the translation run (the shipped student).
        data: the evaluation dataset (new test subjects; labels beside the images).
        out: the output folder (replaced: the demo's own).
        progress, log: as for :func:`utility`.
        **over: other ``UtilityConfig`` fields (e.g. a smaller budget).
    """
    from .utility_report import section_lines

    t0 = time.perf_counter()
    cfg = UtilityConfig(checkpoint=str(run_dir), data=str(data), source="synthetic_low",
                        target="real_normal", out=str(out), overwrite=True, progress=progress,
                        **{**DEMO, **over})
    res = utility(cfg, progress=progress, log=log)
    lines = ["## Does the translation train better models? (sim-to-real utility)", "",
             *section_lines(res, cfg, f"{Path(out).name}/predictions.png"), "",
             f"Budget: `eval.utility.DEMO` (docs/utility.md has the full benchmark on this data "
             f"and another seed); {time.perf_counter() - t0:.0f} s here.", ""]
    return lines, time.perf_counter() - t0
