"""The numbers of docs/evaluation.md's realism and trust metrics (C2ST, noise vs signal,
hallucinations), measured on the demo's simulated data (128 px).

* ``c2st``: the classifier two-sample test as a judge -- real target images against disjoint
  real images of the same domain (the floor, ~0.5), a Gaussian-blurred copy of them, and the same
  views at a lower dose (both should be ~1) -- with what one row costs (wall and CPU seconds,
  the machine's load average stated).
* ``halluc``: the hallucination measure's false positives (identity, a mild Gaussian denoise,
  the true target view as a perfect translation) and its sensitivity: the fraction of blobs
  added to the true target view (Gaussian, std 1 or 2 px, amplitude a multiple of the source's
  local noise, at random body positions) that it finds.
* ``noise``: the noise-vs-signal curves of the target domain's held-out images and of the
  source domain against the target domain's reference curve.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/metric_numbers.py [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from _blocks import fill_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation.md"


def _load(data: Path, domain: str, split: str):
    from medshift_fast.eval._data import load_domain

    return load_domain(data, domain, split, 128)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(x.numpy(), (0, 0, sigma, sigma))).float()


def c2st_block(data: Path) -> str:
    from medshift_fast.eval.c2st import C2STConfig, c2st

    ref = _load(data, "real_exposure", "train")
    held = [_load(data, "real_exposure", s) for s in ("val", "test")]
    low = [_load(data, "real_low", s) for s in ("val", "test")]
    x = torch.cat([h.x for h in held])
    groups = sum((h.groups() for h in held), [])
    x_low = torch.cat([h.x for h in low])
    load = os.getloadavg()[0]
    cfg = C2STConfig()
    rows = [("real_exposure, other subjects (real vs real: the floor)", x),
            ("the same, Gaussian-blurred (σ 0.7 px)", _blur(x, 0.7)),
            ("the same views at the real_low dose (1500 vs 20000 photons)", x_low)]
    lines = ["| translated set (vs real_exposure train) | C2ST accuracy [95 % CI] | per seed | "
             "wall s | CPU s |", "|---|---|---|---|---|"]
    for name, y in rows:
        r = c2st(ref.x, y, real_groups=ref.groups(), fake_groups=groups, cfg=cfg)
        lines.append(f"| {name} | {r.accuracy:.3f} [{r.lo:.3f}, {r.hi:.3f}] | "
                     f"{', '.join(f'{a:.2f}' for a in r.per_seed)} | {r.seconds:.1f} | "
                     f"{r.cpu_seconds:.1f} |")
    return "\n".join(lines) + (
        f"\n\n{ref.x.shape[0]} real images of {len(set(ref.groups()))} subjects against "
        f"{x.shape[0]} of {len(set(groups))} other subjects; {cfg.seeds} seeds × {cfg.steps} "
        f"steps of {cfg.batch} crops of {cfg.crop} px; {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} cores with a 1-minute load average of {load:.1f} when it started "
        "(a shared machine: the seconds are an upper bound, rerun quiet for the cost).")


def _local_noise(src: torch.Tensor, out: torch.Tensor, cy: int, cx: int, r: int = 6) -> float:
    """Robust std of the source's second difference (through the intensity map) near (cy, cx)."""
    from medshift_fast.translate import hallucination as H

    h, w = src.shape
    fs = H.quantile_match(src.double().view(1, 1, h, w),
                          H.gaussian_blur(out.double().view(1, 1, h, w), H.RHO))
    d = H._diff2(fs)[cy - r:cy + r + 1, cx - r:cx + r + 1]
    return 1.4826 * float((d - d.median()).abs().median())


def halluc_block(data: Path) -> str:
    from medshift_fast.translate.hallucination import (
        _box_max,
        _plateaus,
        hallucination_batch,
        hallucination_mask,
    )

    lines = ["| pair | identity | Gaussian σ 0.7 | true target view | blob σ | detected at 3 / "
             "5 / 8 / 12 × the source's local noise |", "|---|---|---|---|---|---|"]
    amps = (3, 5, 8, 12)
    counts, missed, near_structure = {}, 0, 0
    for src_dom, tgt_dom in (("synthetic_low", "real_normal"), ("real_low", "real_exposure")):
        s = _load(data, src_dom, "test")
        from medshift_fast.eval._data import align

        t = align(s, _load(data, tgt_dom, "test"))
        fp = []
        for out in (s.x, _blur(s.x, 0.7), t):
            fp.append(np.mean([r["count"] for r in hallucination_batch(s.x, out)]))
        yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
        for sb in (1.0, 2.0):
            found = {a: 0 for a in amps}
            n = 0
            for i in range(0, s.x.shape[0], 2):
                src, tgt = s.x[i, 0], t[i, 0]
                g = torch.Generator().manual_seed(1000 + i)
                clip = _box_max(_plateaus(src).float(), 8) > 0  # no information there
                ok = (tgt > -0.5) & ~clip
                ok[:10], ok[-10:], ok[:, :10], ok[:, -10:] = False, False, False, False
                body = torch.nonzero(ok)
                cy, cx = (int(v) for v in body[torch.randint(len(body), (1,), generator=g)][0])
                nl = _local_noise(src, tgt, cy, cx)
                base = hallucination_mask(src, tgt)[0]
                blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sb**2))
                for a in amps:
                    hit = hallucination_mask(src, tgt + a * nl * blob)[0] & ~base
                    found[a] += bool(hit[cy - 3:cy + 4, cx - 3:cx + 4].any())
                if not hit[cy - 3:cy + 4, cx - 3:cx + 4].any():  # missed at the largest: why?
                    missed += 1
                    hit = hallucination_mask(src, tgt + amps[-1] * nl * blob, support=1.0)[0]
                    near_structure += bool(hit[cy - 3:cy + 4, cx - 3:cx + 4].any())
                n += 1
            counts[src_dom] = (s.x.shape[0], n)
            lines.append(f"| {src_dom} → {tgt_dom} | {fp[0]:.2f} | {fp[1]:.2f} | {fp[2]:.2f} | "
                         f"{sb:g} px | " + " / ".join(f"{found[a] / n:.2f}" for a in amps) + " |")
    n_all, n_blob = next(iter(counts.values()))
    return "\n".join(lines) + (
        f"\n\nFalse positives: mean count per image over the {n_all} test views of each pair "
        "(the source itself, a mild denoise of it, and the pixel-aligned true target view: what "
        "a perfect translation is counted). Sensitivity: one blob per image added to the true "
        f"target view ({n_blob} images per cell) at a random body position at least 8 px from "
        "a clipped plateau of the source (where the source has no information, nothing is "
        "counted by design), detected when a found pixel lies within 3 px of its centre. Of the "
        f"{missed} blobs missed at {amps[-1]}×, {near_structure} are found when the 'source has "
        "none nearby' test is switched off (support = 1): they sit next to a structure the "
        "source has, where an added blob reads as an enhancement, not counted by design.")


def noise_block(data: Path) -> str:
    from medshift_fast.eval.noise_curve import curve_deviation, noise_curve, signal_bins

    lines = ["| pair | row | noise std / target's, per body signal bin (low → high) | "
             "max \\|ratio − 1\\| |", "|---|---|---|---|"]
    for src_dom, tgt_dom in (("synthetic_low", "real_normal"), ("real_low", "real_exposure")):
        ref = _load(data, tgt_dom, "train").x
        edges = signal_bins(ref, 8)
        rc = noise_curve(ref, edges)
        for name, x in (("true target (test)", _load(data, tgt_dom, "test").x),
                        ("identity (the source)", _load(data, src_dom, "test").x)):
            c = noise_curve(x, edges)
            lines.append(f"| {src_dom} → {tgt_dom} | {name} | "
                         + " ".join(f"{v:.2f}" for v in c.std / rc.std)
                         + f" | {curve_deviation(c, rc):.2f} |")
    return "\n".join(lines) + ("\n\nEight equal-count bins of the body's low-passed signal "
                               "of the target domain's train images (the reference curve).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="the demo's simulated 128-px dataset (default: simulate it)")
    ap.add_argument("--only", choices=("c2st", "halluc", "noise"), help="one block only")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / "data"
        if not a.data:
            from medshift_fast.data import simulate

            simulate(data, subjects=40, views=6, size=128, seed=0, progress=False)
        for name, fn in (("noise", noise_block), ("halluc", halluc_block), ("c2st", c2st_block)):
            if a.only in (None, name):
                fill_block(DOC, f"metrics-{name}", fn(data), required=True)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
