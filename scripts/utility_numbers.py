"""The measured sections of docs/utility.md (generated blocks; rerun this, never edit them).

    python scripts/utility_numbers.py [--work runs/utility_docs] [--workers 2] [--teacher]

Data: the demo's simulated set (seed 0: 40 subjects x 6 views x 5 domains at 128 px; its
train and val splits) and the same protocol at seed 1, each with 8 NEW subjects rendered as
the test split (``data.extend.add_test_subjects``, as the demo: 48 test views per domain).
Run: the shipped one-step student ``pretrained/demo128_adv`` (``--checkpoint``), synthetic_low
-> real_normal. Blocks:

1. ``utility-seed0``, ``utility-seed1``: every condition at the benchmark's default budget
   (``UtilityConfig``), 3 training seeds; with ``--teacher`` also the teacher
   ``pretrained/demo128`` at tau 0.6 (30 network calls per image: slow on a CPU);
2. ``utility-demo``: the demo's budget (``eval.utility.DEMO``) on seed 0, as ``make demo`` runs;
3. ``utility-segmentation``: bone-mask segmentation (Dice), synthetic as is vs the oracle, on
   both seeds: why the benchmark's task is the bone line-integral regression.

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
STUDENT, TEACHER = ROOT / "pretrained" / "demo128_adv", ROOT / "pretrained" / "demo128"


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
    from medshift_fast.eval.utility import UtilityConfig, utility

    cfg = UtilityConfig(checkpoint=str(STUDENT), data=str(data), source="synthetic_low",
                        target="real_normal", out=str(work / name), cache=str(work / "cache"),
                        workers=workers, overwrite=True, progress=progress, **over)
    t0 = time.perf_counter()
    res = utility(cfg)
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return cfg, res


def block(cfg, res, fig: str | None) -> str:
    from medshift_fast.eval.utility_report import section_lines

    lines = section_lines(res, cfg, fig or "")
    if fig is None:
        lines = lines[:-1]
    s = res.settings
    lines += ["", f"Data: `{Path(cfg.data).name}` (test subjects "
              f"{', '.join(s['test_subjects'])}); classical route: blur "
              f"{s['classical']['blur_px']:g} px" if s.get("classical") else ""]
    return "\n".join(lines).rstrip() + "\n"


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
