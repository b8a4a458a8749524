"""The numbers of docs/evaluation.md: the evaluation's constants, what each classical baseline
costs per 128-px image on this CPU, and how FID-ENL0 / KID behave on small samples.

* ``constants``: the tuning grids, caps and sample-size limits, read from the code.
* ``costs``: seconds per image of each classical baseline (one thread, simulated 128-px images;
  median of interleaved repetitions) and what tuning it costs at the default caps.
* ``smalln``: FID-ENL0 and KID ± std between two *disjoint* sets of n images of the same
  simulated domain (true distance 0), mean ± std over random splits, for several n: the bias
  and noise a comparison at that n carries.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/eval_numbers.py [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _blocks import fill_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation.md"


def constants() -> str:
    from medshift_fast.eval import baselines as B
    from medshift_fast.eval import evaluate as ev
    from medshift_fast.eval import report, stats

    cfg = {f.name: f.default for f in ev.EvalConfig.__dataclass_fields__.values()}
    lines = ["| baseline | parameter | grid (log-spaced) | tuning images (cap) |",
             "|---|---|---|---|"]
    for b in B.CLASSICAL:
        cap = cfg["tune_images"] if b.max_tune_images is None else min(cfg["tune_images"],
                                                                        b.max_tune_images)
        lines.append(f"| {b.label} | {b.param}{' (' + b.unit + ')' if b.unit else ''} | "
                     f"{', '.join(f'{v:g}' for v in b.grid)} | {cap} |")
    lines += ["", f"- `MIN_N_FID` = {ev.MIN_N_FID}: FID-ENL0 / KID are refused below this many "
              "images without `--allow-small-n`.",
              f"- `RELIABLE_N_FID` = {report.RELIABLE_N_FID}: below it the report warns.",
              f"- Bootstrap: {cfg['bootstrap']} resamples, {stats.LEVEL:.0%} percentile "
              f"intervals, seed = `--seed` (default {cfg['seed']}).",
              f"- Tuning split `{cfg['tune_split']}`, at most {cfg['tune_images']} source images "
              f"(BM3D: {B.BM3D_TUNE_IMAGES})."]
    return "\n".join(lines)


def _images(data: Path, domain: str, split: str | None, n: int | None = None):
    from medshift_fast.eval._data import load_domain

    return load_domain(data, domain, split, 128, n).x


def costs(data: Path, reps: int = 3) -> str:
    from medshift_fast.eval import baselines as B

    x = _images(data, "real_low", "val", 4)
    wall = {b.key: [] for b in B.CLASSICAL}
    cpu = {b.key: [] for b in B.CLASSICAL}
    load = os.getloadavg()[0]
    for _ in range(reps):  # interleaved, so a load change hits every baseline alike
        for b in B.CLASSICAL:
            v = b.grid[len(b.grid) // 2]
            t, c = time.perf_counter(), time.process_time()
            b.apply(x, v)
            wall[b.key].append((time.perf_counter() - t) / x.shape[0])
            cpu[b.key].append((time.process_time() - c) / x.shape[0])
    lines = ["| baseline | CPU s / 128-px image | wall s / image | grid × tuning images | "
             "tuning CPU s |", "|---|---|---|---|---|"]
    for b in B.CLASSICAL:
        c, w = statistics.median(cpu[b.key]), statistics.median(wall[b.key])
        k = 12 if b.max_tune_images is None else min(12, b.max_tune_images)
        lines.append(f"| {b.label} | {c:.4f} | {w:.4f} | {len(b.grid)} × {k} | "
                     f"{c * len(b.grid) * k:.1f} |")
    return "\n".join(lines) + (
        f"\n\nMeasured by `scripts/eval_numbers.py` on {x.shape[0]} simulated real_low images, "
        f"median of {reps} interleaved runs, one thread, {os.cpu_count()} cores with a 1-minute "
        f"load average of {load:.1f} when it started (CPU time is the process's own; wall time "
        "grows with whatever else runs).")


def small_n(data: Path, splits: int = 10) -> str:
    from medshift_fast.eval import ENL0Features, frechet_distance, kid

    x = torch.cat([_images(data, "real_normal", s) for s in ("train", "val", "test")])
    f = ENL0Features(batch_size=64)(x)
    rng = np.random.default_rng(0)
    ns = [n for n in (8, 16, 32, 48, 64, 100) if 2 * n <= f.shape[0]]
    lines = ["| n per set | FID-ENL0 (same domain) | KID mean | KID subset std |",
             "|---|---|---|---|"]
    for n in ns:
        fid, km, ks = [], [], []
        for _ in range(splits):
            p = torch.from_numpy(rng.permutation(f.shape[0]))
            a, b = f[p[:n]], f[p[n:2 * n]]
            fid.append(frechet_distance(a, b))
            m, s = kid(a, b, subset_size=max(2, n // 2), seed=0)
            km.append(m)
            ks.append(s)
        lines.append(f"| {n} | {np.mean(fid):.1f} ± {np.std(fid):.1f} | "
                     f"{np.mean(km):+.4f} ± {np.std(km):.4f} | {np.mean(ks):.4f} |")
    return "\n".join(lines) + (f"\n\nTwo disjoint random sets of n simulated real_normal "
                               f"images each ({f.shape[0]} images in all, 128 px), "
                               f"{splits} random splits per n (mean ± std over splits).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="simulated 128-px dataset (default: simulate one)")
    ap.add_argument("--subjects", type=int, default=40)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    fill_block(DOC, "eval-constants", constants(), required=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / "data"
        if not a.data:
            from medshift_fast.data import simulate

            simulate(data, subjects=a.subjects, views=6, size=128, seed=0, progress=False)
        fill_block(DOC, "eval-costs", costs(data), required=True)
        fill_block(DOC, "eval-smalln", small_n(data), required=True)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
