"""The measured sections of docs/utility.md (generated blocks; rerun this, never edit them).

    python scripts/utility_numbers.py [--work runs/utility_docs] [--workers 2] [--teacher]

Data: the demo's simulated set (seed 0: 40 subjects x 6 views x 5 domains at 128 px; its
train and val splits) and the same protocol at seed 1, each with 8 NEW subjects rendered as
the test split (``data.extend.add_test_subjects``, as the demo: 48 test views per domain).
Run: the demo's one-step student ``pretrained/demo128_lean_dose`` (``--checkpoint``; stochastic,
lean), synthetic_low -> real_normal. Blocks:

1. ``utility-seed0``, ``utility-seed1``: every condition at the benchmark's default budget
   (``UtilityConfig``), 3 training seeds; with ``--teacher`` also the teacher
   ``pretrained/demo128`` at tau 0.6 (30 network calls per image: slow on a CPU);
2. ``utility-demo``: the demo's budget (``eval.utility.DEMO``) on seed 0, as ``make demo`` runs;
3. ``utility-segmentation``: bone-mask segmentation (Dice), synthetic as is vs the oracle, on
   both seeds: why the benchmark's task is the bone line-integral regression;
4. ``utility-residual``: what separates each condition's training images from the real
   renderings of the same views (seed 0): the residual, smoothed (Gaussian, 2 px), fitted
   inside the head by least squares on the detector row (the anode heel is a vertical gradient),
   row x soft tissue, bone_mm and soft_mm.

5. ``utility-students``: the shipped students side by side at tau 0.6 on seed 0 at the default
   budget (the stochastic lean default, its deterministic lean parent, the adversarial U-Net
   student), each student's gap closed and the paired difference of the first against the
   others (bootstrap over the test views of the seed-averaged scores).
Translations and trainings are cached in WORK/cache (keyed by everything they depend on), so a
rerun only re-scores. The figure of seed 0 is copied to docs/utility/predictions_seed0.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

DOC = ROOT / "docs" / "utility.md"
TEACHER = ROOT / "pretrained" / "demo128"
#: the students compared in block 5, the demo's default (``demo.DEFAULT_STUDENT``) first
STUDENTS = ("demo128_lean_dose", "demo128_lean_tex", "demo128_lean", "demo128_lean_sto",
            "demo128_adv")
STUDENT = ROOT / "pretrained" / STUDENTS[0]


def dataset(work: Path, seed: int, progress: bool) -> Path:
    """The demo's data at ``seed`` plus its new test subjects (built once)."""
    from medshift_fast.data import simulate
    from medshift_fast.data.extend import add_test_subjects

    data, root = work / f"data_seed{seed}", work / f"eval_seed{seed}"
    if not (root / "eval_data.json").is_file():
        simulate(data, subjects=40, views=6, size=128, seed=seed, progress=progress,
                 overwrite=True)
        add_test_subjects(data, root, 8, progress=progress)
    return root


def run(work: Path, name: str, data: Path, workers: int, progress: bool, **over):
    """The benchmark with the demo's student (``STUDENT``)."""
    return run_with(work, name, data, workers, progress, STUDENT, **over)


def block(cfg, res, fig: str | None) -> str:
    from medshift_fast.eval.utility_report import section_lines

    lines = section_lines(res, cfg, fig or "")
    if fig is None:
        lines = lines[:-2]  # the figure and the blank line before it
    s = res.settings
    data = f"Data: `{Path(cfg.data).name}` (test subjects {', '.join(s['test_subjects'])})"
    if s.get("classical"):
        data += f"; classical route: blur {s['classical']['blur_px']:g} px"
    return "\n".join([*lines, "", data + "."]) + "\n"


def run_with(work: Path, name: str, data: Path, workers: int, progress: bool, ckpt: Path,
             **over):
    from medshift_fast.eval.utility import UtilityConfig, utility

    cfg = UtilityConfig(checkpoint=str(ckpt), data=str(data), source="synthetic_low",
                        target="real_normal", out=str(work / name), cache=str(work / "cache"),
                        workers=workers, overwrite=True, progress=progress, **over)
    t0 = time.perf_counter()
    res = utility(cfg)
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return cfg, res


def students_block(work: Path, data: Path, workers: int, progress: bool) -> str:
    """Block 5 (module docstring)."""
    import numpy as np

    from medshift_fast.eval.stats import LEVEL, bootstrap_indices, percentile_interval

    per, rows = {}, []
    for name in STUDENTS:
        cfg, res = run_with(work, f"students_{name}", data, workers, progress,
                            ROOT / "pretrained" / name, taus=(0.6,),
                            conditions=("synthetic", "translated", "oracle"))
        r = next(r for r in res.rows if r["condition"].startswith("translated"))
        per[name] = np.asarray(res.per_seed[r["condition"]], dtype=np.float64).mean(0)
        rows.append((name, r))
    idx = bootstrap_indices(len(per[STUDENTS[0]]), cfg.bootstrap, cfg.seed)
    lines = [f"Each shipped student translates the {cfg.source} training views at τ = 0.6; the "
             f"same U-Net and budget as above ({cfg.seeds} training seeds, seed-0 data, 48 "
             f"{cfg.target} test views). Paired: the same test views and training seeds.", "",
             "| student | MAE (mm) | 95 % CI | gap closed | 95 % CI | "
             f"{STUDENTS[0]} − it (mm), paired 95 % CI |", "|---|---:|---|---:|---|---|"]
    for name, r in rows:
        if name == STUDENTS[0]:
            diff = ""
        else:
            d = per[STUDENTS[0]] - per[name]
            lo, hi = percentile_interval(d[idx].mean(1), LEVEL)
            diff = f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        lines.append(f"| `{name}` | {r['score']:.3f} | {r['ci_lo']:.3f} – {r['ci_hi']:.3f} | "
                     f"{100 * r['gap_closed']:.0f} % | {100 * r['gap_lo']:.0f} – "
                     f"{100 * r['gap_hi']:.0f} % | {diff} |")
    return "\n".join(lines) + "\n"


def residual_block(work: Path, data: Path) -> str:
    """Block 4 (module docstring), from the cached translations of block 1."""
    import numpy as np
    import torch

    from medshift_fast.eval.sim2real import MatchNoiseBlur, gaussian_blur
    from medshift_fast.eval.utility import UtilityConfig
    from medshift_fast.eval.utility_data import load_set
    from medshift_fast.eval.utility_run import translated
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    cfg = UtilityConfig(checkpoint=str(STUDENT), data=str(data), source="synthetic_low",
                        target="real_normal", out=str(work / "residual"))
    src = load_set(data, "synthetic_low", "train", channel="bone_mm")
    soft = load_set(data, "synthetic_low", "train", channel="soft_mm").y
    real = load_set(data, "real_normal", "train").x
    run = load_run(STUDENT)
    sets = {"synthetic (as is)": src.x}
    for tau in cfg.taus:
        tr = Translator(run, "synthetic_low", "real_normal", tau=tau, seed=cfg.seed)
        sets[f"translated τ={tau:g}"] = translated(tr, src.x, run, cfg, work / "cache", False,
                                                   "residual")
    fit = MatchNoiseBlur.fit(load_set(data, "synthetic_low", "val").x,
                             load_set(data, "real_normal", "val").x, seed=cfg.seed)
    sets["hist-match + noise + blur"] = fit.apply(src.x, seed=cfg.seed)
    n, _, h, _ = src.x.shape
    row = torch.linspace(1.0, -1.0, h).view(1, 1, h, 1).expand_as(src.x)  # +1 top, -1 bottom
    body = ((src.y + soft) > 0).flatten().numpy()
    cols = [row, row * soft / 100, src.y / 10, soft / 100, torch.ones_like(row)]
    A = np.stack([c.flatten().numpy()[body] for c in cols], 1).astype(np.float64)
    lines = ["| condition | RMS residual (body) | heel term: row coefficient | R² of the fit |",
             "|---|---:|---:|---:|"]
    for name, x in sets.items():
        r = gaussian_blur((x - real).double(), 2.0).flatten().numpy()[body]
        coef = np.linalg.lstsq(A, r, rcond=None)[0]
        r2 = 1 - float(((r - A @ coef) ** 2).mean() / r.var())
        lines.append(f"| {name} | {float(np.sqrt((r ** 2).mean())):.4f} | {coef[0]:+.4f} | "
                     f"{r2:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from _blocks import fill_block

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "utility_docs"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--teacher", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from medshift_fast.eval.utility import DEMO

    (ROOT / "docs" / "utility").mkdir(exist_ok=True)
    seg = []
    for seed in (0, 1):
        data = dataset(work, seed, a.progress)
        extra = {"teacher": str(TEACHER)} if a.teacher and seed == 0 else {}
        cfg, res = run(work, f"full_seed{seed}", data, a.workers, a.progress, **extra)
        fig = None
        if seed == 0:
            shutil.copyfile(work / f"full_seed{seed}" / "predictions.png",
                            ROOT / "docs" / "utility" / "predictions_seed0.png")
            fig = "utility/predictions_seed0.png"
        fill_block(DOC, f"utility-seed{seed}", block(cfg, res, fig), required=True)
        if seed == 0:
            fill_block(DOC, "utility-residual", residual_block(work, data), required=True)
            fill_block(DOC, "utility-students",
                       students_block(work, data, a.workers, a.progress), required=True)
            demo = {k: v for k, v in DEMO.items() if k != "workers"}  # --workers (2)
            cfg, res = run(work, "demo_seed0", data, a.workers, a.progress, **demo)
            fill_block(DOC, "utility-demo", block(cfg, res, None), required=True)
        cfg, res = run(work, f"seg_seed{seed}", data, a.workers, a.progress,
                       task="segmentation", label="bone_mask",
                       conditions=("synthetic", "oracle"))
        seg.append(f"**Seed {seed}:**\n\n" + block(cfg, res, None))
    fill_block(DOC, "utility-segmentation", "\n".join(seg), required=True)
    print(json.dumps({"doc": str(DOC)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
