"""Candidate one-step student networks: arithmetic and CPU time per megapixel beside the anchor.

Issue 30 asks for a student chosen for its cost per pixel. Every candidate is a
``models.lean.LeanConfig`` (random weights: timing does not depend on training); the anchor is
the shipped U-Net student (``--anchor``, default ``pretrained/demo128_adv``). Per candidate:

* parameters, the receptive-field halo (``models.lean.halo``; the U-Net's is global),
* GFLOP per megapixel of the network: ``torch.utils.flop_counter.FlopCounterMode`` around
  ``Translator(student, ..., tile=None)(x)`` of one ``--flop-size`` image (the anchor: one
  128-px tile, as issue 30 measured it -- its attention makes a larger whole image dearer per
  pixel); tile overlap is not counted here,
* CPU time per megapixel of the network: the same pixels (one ``--size`` image) for every
  network, the lean ones whole, the anchor as (size / 128)^2 tiles of 128 px in one batch
  (tiles without overlap); one thread, this process's CPU time, all providers interleaved in
  the same repetitions; the anchor's time over the candidate's (> 1: faster),
* with ``--e2e N``: the whole ``Translator`` (its default tiling) on one N x N image, anchor and
  ``--e2e-arch`` candidates interleaved.

    python benchmarks/bench_student_arch.py --md benchmarks/results/student_arch_cpu.md
"""

from __future__ import annotations

import argparse
import sys

import _harness as H
import torch
from torch.utils.flop_counter import FlopCounterMode

from medshift_fast.models.lean import LeanConfig, halo
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import LoadedRun, load_run
from medshift_fast.translate import Translator

PAIR = ((0, 3),)
# name -> LeanConfig fields (in_channels / num_classes from the anchor)
CANDIDATES: dict[str, dict] = {
    "lean": {},  # the default: r 2, widths (32, 64), blocks (1, 2), 3x3 convs, one noise map
    "lean_r2_3lvl": {"widths": (24, 48, 96), "blocks": (1, 1, 2)},
    "lean_r4_1lvl": {"unshuffle": 4, "widths": (64,), "blocks": (4,)},
    "lean_r4_2lvl": {"unshuffle": 4, "widths": (48, 96), "blocks": (2, 2)},
    "lean_dw5": {"widths": (48, 96), "blocks": (2, 4), "block": "dw", "kernel": 5},
    "lean_r2_wide": {"widths": (48, 96), "blocks": (1, 2)},
}


def lean_student(fields: dict, anchor: LoadedRun) -> LoadedRun:
    """A lean student with random (non-zero) weights and the anchor's domains."""
    torch.manual_seed(0)
    lc = {"in_channels": anchor.in_channels, "num_classes": int(anchor.model.num_classes),
          **fields}
    st = Student(StudentConfig(arch="lean", lean=lc, pairs=PAIR,
                               teacher=dict(anchor.model.config.teacher)))
    with torch.no_grad():
        for p in st.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return LoadedRun.from_model(st.eval(), anchor.domains,
                                image_size=anchor.image_size)


def gflop_per_mp(run: LoadedRun, size: int) -> float:
    """FlopCounterMode's count around one untiled Translator call on a size x size image, per
    MP."""
    tr = Translator(run, 0, 3, tile=None)
    x = torch.rand(1, run.in_channels, size, size) * 2 - 1
    with FlopCounterMode(display=False) as fc:
        tr.translate(x)
    return fc.get_total_flops() / 1e9 / (size * size / 1e6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default="pretrained/demo128_adv")
    ap.add_argument("--only", nargs="*", help="candidate names (default: all)")
    ap.add_argument("--size", type=int, default=512, help="side of the timed image (px)")
    ap.add_argument("--flop-size", type=int, default=256, help="side of the counted image")
    ap.add_argument("--e2e", type=int, default=0, help="also time the whole Translator on one "
                    "N x N image (0: skip)")
    ap.add_argument("--e2e-arch", nargs="*", default=["lean"])
    H.add_common_args(ap, reps=5, threads=1, device=False)
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    anchor = load_run(args.anchor)
    names = args.only or list(CANDIDATES)
    runs = {"anchor": anchor, **{n: lean_student(CANDIDATES[n], anchor) for n in names}}
    rep = H.Report("One-step student candidates: cost per megapixel (CPU)", "cpu",
                   about="\n\n".join(__doc__.split("\n\n")[1:3]), params={
                       "anchor": args.anchor, "size": args.size, "flop_size": args.flop_size,
                       "threads": args.threads, "reps": args.reps}, argv=argv)
    rows = []
    x = torch.rand(1, anchor.in_channels, args.size, args.size) * 2 - 1
    tiles = x.unfold(2, 128, 128).unfold(3, 128, 128).reshape(-1, anchor.in_channels, 128, 128)
    steps = {}
    for name, run in runs.items():
        m = run.model
        cfg = m.config.lean if m.config.arch == "lean" else None
        rows.append({"provider": name, "group": "network",
                     "config": "U-Net student (tiny)" if cfg is None else
                     ", ".join(f"{k}={v}" for k, v in CANDIDATES.get(name, {}).items())
                     or "default",
                     "params_k": sum(p.numel() for p in m.parameters()) / 1e3,
                     "halo": None if cfg is None else halo(LeanConfig.from_dict(cfg)),
                     "gflop_mp": gflop_per_mp(run, 128 if cfg is None else args.flop_size)})
        xi = x if cfg is not None else tiles
        n = m.draw_noise(xi.shape, torch.Generator().manual_seed(0))
        ys, yt = torch.zeros(xi.shape[0], dtype=torch.long), torch.full((xi.shape[0],), 3)
        steps[name] = (lambda m=m, n=n, ys=ys, yt=yt, xi=xi: m.translate(xi, 0.6, ys, yt, n))
    t = H.time_interleaved(steps, reps=args.reps, warmup=1, clock="cpu", no_grad=True)
    mp = args.size * args.size / 1e6
    for r in rows:
        r.update(t[r["provider"]].fields("ms"))
        r["ms_mp"] = r["ms"] / mp
        r["gflop_s"] = r["gflop_mp"] / (r["ms_mp"] / 1e3)
    H.add_ratios(rows, "anchor", ["group"])
    for r in rows:
        r["flop_ratio"] = rows[0]["gflop_mp"] / r["gflop_mp"]
    cols = [("network", "provider", "{}"), ("config", "config", "{}"),
            ("params (k)", "params_k", "{:.0f}"), ("halo (px)", "halo", "{}"),
            ("GFLOP/MP", "gflop_mp", "{:.1f}"), ("anchor / it, FLOP", "flop_ratio", "{:.1f}x"),
            ("anchor / it, CPU time", lambda r: H.ratio(r, "vs_anchor"), "{}"),
            ("GFLOP/s achieved", "gflop_s", "{:.1f}")]
    rep.table(rows, cols, heading=f"Network only, {args.size}x{args.size} px (the anchor: "
              "128-px tiles, no overlap)")
    if args.e2e:
        big = torch.rand(1, anchor.in_channels, args.e2e, args.e2e) * 2 - 1
        trs = {n: Translator(runs[n], 0, 3) for n in ["anchor", *args.e2e_arch]}
        e2e = {n: (lambda tr=tr: tr.translate(big)) for n, tr in trs.items()}
        te = H.time_interleaved(e2e, reps=max(1, args.reps // 2), warmup=0, clock="cpu",
                                no_grad=True)
        erows = [{"provider": n, "group": "e2e", "tile": trs[n].tile,
                  "overlap": trs[n].overlap, **te[n].fields("s")} for n in e2e]
        H.add_ratios(erows, "anchor", ["group"], key="s")
        rep.table(erows, [("student", "provider", "{}"), ("tile", "tile", "{}"),
                          ("overlap", "overlap", "{}"),
                          ("anchor / it, CPU time", lambda r: H.ratio(r, "vs_anchor"), "{}")],
                  heading=f"Translator end to end, {args.e2e}x{args.e2e} (default tiling)")
    rep.note(H.RATIO_NOTE)
    rep.note("GFLOP/s achieved is computed from this run's CPU time on a shared machine: a "
             "lower bound; the lead reruns timings on a quiet machine.")
    rep.write(args.md, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
