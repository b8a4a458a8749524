"""100 %-zoom crops of students' translations of VALIDATION images, beside the source and the true
(pixel-aligned) target: one PNG per pair (eval.figures.save_zoom_grid: nearest-neighbour zoom,
no resampling). A stochastic student gets two columns, seeds 0 and 1 (per-image generators as in
scripts/distill_ablation.py), so the texture's variation and the kept anatomy show side by side.

    python scripts/student_zoom.py det=pretrained/demo128_adv sto=runs/lean/L1 \\
        --out docs/figures/distill_zoom --tau 0.6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_ablation import PAIRS, _load, _student, _translate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="NAME=RUN_DIR[@NOISE]")
    p.add_argument("--data", default="runs/pretrain/data")
    p.add_argument("--tau", type=float, default=0.6)
    p.add_argument("--rows", default="0,7,14", help="validation image indices")
    p.add_argument("--crop", default="40,24,48,64", help="y,x,h,w of the crop")
    p.add_argument("--zoom", type=int, default=3)
    p.add_argument("--out", default="docs/figures/distill_zoom", help="PNG prefix")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from medshift_fast.eval.figures import save_zoom_grid
    from medshift_fast.translate import Translator

    rows = [int(v) for v in a.rows.split(",")]
    crop = tuple(int(v) for v in a.crop.split(","))
    for src, tgt in PAIRS:
        xs, ks = _load(a.data, src, "val")
        xt, kt = _load(a.data, tgt, "val")
        xs = xs[rows]
        gt = xt[torch.tensor([kt.index(ks[r]) for r in rows])]
        images, cols = {"source": xs}, ["source"]
        for spec in a.runs:
            name, path = spec.split("=", 1)
            run, stochastic = _student(path)
            tr = Translator(run, src, tgt, tau=a.tau)
            with torch.no_grad():
                for seed in (0, 1) if stochastic else (0,):
                    col = f"{name} s{seed}" if stochastic else name
                    images[col] = _translate(tr, xs, seed)
                    cols.append(col)
        images["true target"] = gt
        cols.append("true target")
        out = Path(f"{a.out}_{src}_{tgt}.png")
        save_zoom_grid(out, images, cols, list(range(len(rows))), crop, zoom=a.zoom)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
