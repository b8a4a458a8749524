"""The lean one-step student on a CPU (issue 30): roofline, execution paths, tiles, end to end.

Anchor: the shipped U-Net student ``pretrained/demo128_adv`` on its own default path (eager
fp32, 128-px tiles overlapping by 32), in the same run. New student: ``--student RUN`` (default
the demo's student ``pretrained/demo128_lean_tex`` -- ``demo.DEFAULT_STUDENT``, stochastic:
its noise maps are drawn and fed on every path -- when it is shipped, else the default
``LeanConfig`` with random weights, saved as a run: time does not depend on the weights, quality
does -- the bf16 check then says nothing about a trained network). Sections:

* Roofline: this machine's fp32 GEMM peak (one 2048x2048x2048 ``torch.mm``, one thread and all),
  GFLOP per megapixel (``FlopCounterMode`` around the network on one tile, and end to end at
  2048² with the default tiling, every tile counted), each path's achieved GFLOP/s (network
  FLOP / this process's CPU time, one thread) and its fraction of the one-thread peak.
* Execution paths: the new student's network on one 512² tile, one thread, every path of
  ``translate.engine`` interleaved (eager fp32 the anchor of the group), the anchor's network
  on its 128-px tiles (the same pixels) beside them; what ``auto`` picks here and the bf16
  check's PSNR.
* Tiles: CPU time per megapixel of a 2048² translation with the default engine against the
  tile side (the overlap is the receptive field, so larger tiles recompute less).
* Exactness: tiled vs whole (PSNR) on 384x320 with 128-px tiles; seam ratio on 2048².
* End to end: ``medshift translate --size native`` in a child process per case (wall, and its
  own peak resident memory, VmHWM: ``demo.native.cli_in_child``) on a 2048² and a 3000x2500
  16-bit PNG and pydicom-data's RG1_UNCI.dcm, anchor and new student (``auto``'s path, and
  beside it ``--engine onnx`` and ``--precision bf16``), ``--threads`` all CPUs.
* ``FrameTranslator`` p50 / p99 per frame at 512² and 1024², anchor and new student, all CPUs.

    python benchmarks/bench_lean.py --md benchmarks/results/lean_cpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import _harness as H
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = H.ROOT
ANCHOR = ROOT / "pretrained" / "demo128_adv"
SHIPPED_LEAN = ROOT / "pretrained" / "demo128_lean_tex"  # timed on it: the same network as
# demo.DEFAULT_STUDENT (demo128_lean_dose), whose cost is the same
PAIR = ("real_low", "real_exposure")
DOC = ROOT / "docs" / "benchmarks.md"


# ------------------------------------------------------------------------------ the students
def new_student(path: str | None, tmp: Path) -> tuple[Path, str]:
    """(run directory, label) of the new student: ``path``, the shipped lean run, or the default
    LeanConfig with random weights saved beside the anchor's domains and learned record."""
    if path:
        return Path(path), Path(path).name
    if (SHIPPED_LEAN / "config.json").is_file():
        return SHIPPED_LEAN, SHIPPED_LEAN.name
    from medshift_fast.models.student import Student, StudentConfig
    from medshift_fast.run import load_run, read_run_config, save_run

    anchor = load_run(ANCHOR)
    a = anchor.model.config
    torch.manual_seed(0)
    st = Student(StudentConfig(arch="lean", lean={"in_channels": anchor.in_channels,
                                                  "num_classes": int(anchor.model.num_classes)},
                               pairs=a.pairs, tau_min=a.tau_min, tau_max=a.tau_max,
                               teacher=dict(a.teacher)))
    with torch.no_grad():
        for p in st.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    cfg = read_run_config(ANCHOR)
    d = save_run(tmp / "lean_random", cfg["train"], st.config.to_dict(), anchor.domains,
                 st.state_dict(), kind="student", extra={"learned": cfg.get("learned")})
    return d, "lean (default LeanConfig, random weights)"


def gflop(fn) -> float:
    """GFLOP of one call (FlopCounterMode: convolutions and matrix products)."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops() / 1e9


def network_gflop_per_mp(tr, side: int) -> float:
    """The network's GFLOP per megapixel on one side x side tile (no overlap counted)."""
    x = torch.rand(1, tr.image_channels, side, side) * 2 - 1
    st = tr.model
    n = st.draw_noise(tuple(x.shape), torch.Generator().manual_seed(0))
    ys, yt = torch.full((1,), tr.settings.source), torch.full((1,), tr.settings.target)
    return gflop(lambda: st.translate(x, tr.settings.tau, ys, yt, n)) / (side * side / 1e6)


def e2e_gflop_per_mp(tr, h: int, w: int) -> tuple[float, int]:
    """GFLOP per megapixel of translating an h x w image with the translator's tiling (every
    tile's network FLOP; the blend's elementwise work is not counted), and the tile count."""
    from medshift_fast.translate.tiling import plan_grid

    f = tr.factor
    g = plan_grid((-(-h // f) * f, -(-w // f) * f), tr.tile, tr.overlap, f, tr.native.margin)
    th, tw = g.tile
    st = tr.model
    x = torch.rand(1, tr.image_channels, th, tw) * 2 - 1
    n = st.draw_noise(tuple(x.shape), torch.Generator().manual_seed(0))
    ys, yt = torch.full((1,), tr.settings.source), torch.full((1,), tr.settings.target)
    one = gflop(lambda: st.translate(x, tr.settings.tau, ys, yt, n))
    return one * g.n_tiles / (h * w / 1e6), g.n_tiles


def gemm_peak(threads: int, side: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of one side^3 fp32 torch.mm with ``threads`` threads, best of ``reps``: this
    process's CPU time with one thread (what the paths are timed in), wall time with more."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    clock = time.process_time if threads == 1 else time.perf_counter
    with H.num_threads(threads):
        torch.mm(a, b)
        best = math.inf
        for _ in range(reps):
            t0 = clock()
            torch.mm(a, b)
            best = min(best, clock() - t0)
    return 2 * side**3 / best / 1e9


# --------------------------------------------------------------------------------- sections
def paths(rep: H.Report, anchor, lean, args) -> list[dict]:
    """The execution paths side by side (one thread, one tile)."""
    import medshift_fast.export  # noqa: F401 - provides the onnx engine
    from medshift_fast.translate import Translator
    from medshift_fast.translate import engine as E

    side = args.tile_side
    x = torch.rand(1, lean.in_channels, side, side) * 2 - 1
    wanted = [("eager", False), ("channels_last", False), ("onnx", False),
              ("channels_last", True), ("compile", False), ("compile", True)]
    if args.no_compile:
        wanted = [w for w in wanted if w[0] != "compile"]
    bf16_native = E.native_bf16("cpu")
    steps, rows = {}, []
    for name, bf16 in wanted:
        label = f"{name}{', bf16' if bf16 else ''}"
        if bf16 and not bf16_native:
            rows.append({"provider": label, "group": "paths",
                         "refused": "no native bf16 on this CPU"})
            continue
        tr = Translator(lean, *PAIR, tile=None, engine=name, bf16=bf16)
        t0 = time.perf_counter()
        try:
            tr.translate(x)  # builds the engine: a compile, the ONNX export or cache hit
        except Exception as exc:  # noqa: BLE001 - a path that cannot run here is reported
            rows.append({"provider": label, "group": "paths", "refused": str(exc)[:120]})
            continue
        rows.append({"provider": label, "group": "paths", "first_call_s":
                     time.perf_counter() - t0, "engine": tr.engine.describe()})
        steps[label] = (lambda tr=tr: tr.translate(x))
    anchor_tr = Translator(anchor, *PAIR, engine="eager")
    tiles = x.unfold(2, 128, 128).unfold(3, 128, 128).reshape(-1, anchor.in_channels, 128, 128)
    steps["anchor network"] = lambda: anchor_tr.translate(tiles)
    t = H.time_interleaved(steps, reps=args.reps, warmup=1, clock="cpu", no_grad=True)
    rows.append({"provider": "anchor network", "group": "paths",
                 "engine": "U-Net student, eager fp32, 128-px tiles (no overlap)"})
    mp = side * side / 1e6
    for r in rows:
        if r["provider"] in t:
            r.update(t[r["provider"]].fields("ms"))
            r["ms_mp"] = r["ms"] / mp
    H.add_ratios(rows, "eager", ["group"])
    return rows


def tile_rows(lean, args) -> list[dict]:
    """CPU time per MP of a 2048² translation against the tile side (default engine)."""
    from medshift_fast.translate import Translator

    s = args.tiles_image
    x = torch.rand(1, lean.in_channels, s, s) * 2 - 1
    trs, rows = {}, []
    cases = [(t, None) for t in args.tile_sides] + [(512, tb) for tb in args.tile_batches]
    for t, tb in cases:
        tr = Translator(lean, *PAIR, tile=t if t else None, tile_batch=tb)
        tr.translate(x[..., :64, :64])  # the engine (bf16 check) outside the timing
        key = (f"tile {t}" if t else "whole") + (f", {tb} per forward" if tb else "")
        trs[key] = tr
        p = tr.plan(tuple(x.shape))
        rows.append({"provider": key, "group": "tiles", "tile": t or s, "n_tiles": p.n_tiles,
                     "plan_mb": p.peak / 2**20, "overlap": tr.overlap,
                     "tile_batch": p.tile_batch,
                     "engine": tr.engine.describe()})
    t = H.time_interleaved({k: (lambda tr=tr: tr.translate(x)) for k, tr in trs.items()},
                           reps=max(1, args.reps // 2), warmup=0, clock="cpu", no_grad=True)
    for r in rows:
        r.update(t[r["provider"]].fields("ms"))
        r["ms_mp"] = r["ms"] / (s * s / 1e6)
    best = min(r["ms_mp"] for r in rows)
    for r in rows:
        r["vs_best"] = r["ms_mp"] / best
    return rows


def exactness(lean) -> list[dict]:
    """Tiled vs whole on 384x320 (128-px tiles, default overlap) and the 2048² seam ratio."""
    from bench_native import _radiograph

    from medshift_fast.eval import seam_ratio
    from medshift_fast.translate import Translator
    from medshift_fast.translate.tiling import plan_grid

    rows = []
    x = torch.from_numpy(_radiograph(384, 320))[None, None]
    for engine, bf16 in (("eager", False), ("auto", None)):
        whole = Translator(lean, *PAIR, tile=None, engine=engine, bf16=bf16)
        tiled = Translator(lean, *PAIR, tile=128, engine=engine, bf16=bf16)
        a, b = whole.translate(x), tiled.translate(x)
        mse = float(((a - b) ** 2).mean())
        rows.append({"provider": f"tiled vs whole, 384x320, 128-px tiles, overlap "
                                 f"{tiled.overlap}", "engine": tiled.engine.describe(),
                     "value": math.inf if mse == 0 else 10 * math.log10(4 / mse),
                     "unit": "dB", "target": ">= 45"})
    big = torch.from_numpy(_radiograph(2048, 2048))[None, None]
    tr = Translator(lean, *PAIR)
    y = tr.translate(big)[0, 0]
    g = plan_grid((2048, 2048), tr.tile, tr.overlap, tr.factor, tr.native.margin)
    rows.append({"provider": f"seam ratio, 2048², {g.n_tiles} tiles of {g.tile[0]} px",
                 "engine": tr.engine.describe(), "value": seam_ratio(y, *g.seams()),
                 "unit": "", "target": "<= 1.05",
                 "input": seam_ratio(big[0, 0], *g.seams())})
    return rows


def e2e(rep, runs: dict[str, Path], args, tmp: Path) -> list[dict]:
    """``medshift translate --size native`` in a child process per case."""
    from bench_native import _radiograph
    from PIL import Image

    from medshift_fast.demo.native import NATIVE_FILE, cli_in_child

    inputs = []
    for h, w in args.e2e_shapes:
        src = tmp / f"in_{h}x{w}.png"
        a = _radiograph(h, w)
        Image.fromarray(((a + 1) * 32767.5).round().astype("uint16")).save(src)
        inputs.append((f"{h}x{w} 16-bit PNG", src))
    if not args.no_dicom:
        try:
            from pydicom.data import get_testdata_file

            inputs.append((NATIVE_FILE, Path(get_testdata_file(NATIVE_FILE, download=False))))
        except Exception:  # noqa: BLE001 - pydicom-data missing: the row says so
            inputs.append((NATIVE_FILE, None))
    # beside auto's choice: the other fp32 path and bf16 (what auto took before the grain bar)
    cases = [(name, run, []) for name, run in runs.items()]
    if "new" in runs:
        cases += [("new, --engine onnx", runs["new"], ["--engine", "onnx"]),
                  ("new, --precision bf16", runs["new"], ["--precision", "bf16"])]
    rows = []
    for label, src in inputs:
        for name, run, extra in cases:
            r = {"provider": name, "group": label, "input": label}
            if src is None:
                r["refused"] = "pydicom-data is not installed"
                rows.append(r)
                continue
            cmd = ["translate", "--checkpoint", str(run), "--source", PAIR[0], "--target",
                   PAIR[1], "--size", "native", "--threads", str(args.e2e_threads),
                   "--out", str(tmp / "out"), "--overwrite", "--no-progress", *extra, str(src)]
            t0 = time.perf_counter()
            rc, err, peak = cli_in_child(cmd)
            stage = next((ln for ln in err.splitlines() if "translating" in ln), "")
            r.update({"s": time.perf_counter() - t0, "peak_mb": peak, "rc": rc, "stage": stage,
                      "how": stage.split("; engine ")[-1] if "; engine " in stage else
                      stage.split("tile(s) per image")[0].split(": ")[-1] + "tiles"})
            if rc:
                r["refused"] = (err.strip().splitlines() or ["?"])[-1][:160]
                r.pop("s")
            rows.append(r)
            print(json.dumps(r), flush=True)
            rep.checkpoint(args.md, args.json)
    H.add_ratios(rows, "anchor", ["group"], key="s")
    return rows


def frames(runs: dict[str, Path], args) -> list[dict]:
    """FrameTranslator latency per frame (all threads), anchor and new student."""
    from medshift_fast.deploy import FrameTranslator

    rows = []
    with H.num_threads(args.e2e_threads):
        for side, n in zip(args.frame_sides, args.frame_counts):
            frame = torch.rand(side, side) * 1.6 - 0.8
            for name, run in runs.items():
                ft = FrameTranslator(str(run), *PAIR, size=side, any_size=True, warmup=1)
                for _ in range(n):
                    ft(frame)
                st = ft.latency_stats()
                rows.append({"provider": name, "group": f"{side}²", "side": side,
                             "frames": st["frames"], "p50_ms": st["p50_ms"],
                             "p99_ms": st["p99_ms"], "engine": "-" if ft.translator.engine
                             is None else ft.translator.engine.describe()})
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        a = next(x for x in rows if x["group"] == r["group"] and x["provider"] == "anchor")
        r["vs_anchor"] = a["p50_ms"] / r["p50_ms"]
    return rows


# --------------------------------------------------------------------------------- the run
def _shape(s: str) -> tuple[int, int]:
    h, _, w = s.partition("x")
    return int(h), int(w or h)


def main(argv=None) -> int:
    from medshift_fast.translate import engine as E

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", help="the new student's run (default: module docstring)")
    ap.add_argument("--tile-side", type=int, default=512, help="the paths' tile (px)")
    ap.add_argument("--tiles-image", type=int, default=2048, help="side of the tile rows' image")
    ap.add_argument("--tile-sides", type=lambda s: [int(v) for v in s.split(",")],
                    default=[128, 256, 384, 512, 768, 1024, 0], help="0: the whole image")
    ap.add_argument("--tile-batches", type=lambda s: [int(v) for v in s.split(",") if v],
                    default=[1, 2], help="512-px tiles per forward (beside the plan's own)")
    ap.add_argument("--e2e-shapes", type=lambda s: [_shape(v) for v in s.split(",")],
                    default=[(2048, 2048), (3000, 2500)])
    ap.add_argument("--e2e-threads", type=int, default=E.machine_threads())
    ap.add_argument("--frame-sides", type=lambda s: [int(v) for v in s.split(",")],
                    default=[512, 1024])
    ap.add_argument("--frame-counts", type=lambda s: [int(v) for v in s.split(",")],
                    default=[10, 5])
    ap.add_argument("--no-dicom", action="store_true", help="skip RG1_UNCI.dcm")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile paths")
    ap.add_argument("--only", nargs="*", help="sections: roofline paths tiles exact e2e frames")
    ap.add_argument("--quick", action="store_true", help="small sizes (developing the bench)")
    ap.add_argument("--doc", action="store_true", help="also fill docs/benchmarks.md's block")
    H.add_common_args(ap, reps=5, threads=1, device=False)
    args = ap.parse_args(argv)
    if args.quick:
        args.tile_side, args.tiles_image, args.reps = 256, 512, 2
        args.tile_sides, args.e2e_shapes = [128, 256, 0], [(512, 512)]
        args.tile_batches = []
        args.frame_sides, args.frame_counts, args.no_dicom = [256], [3], True
        args.no_compile = True
    H.apply_threads(args.threads)
    only = set(args.only or ("roofline", "paths", "tiles", "exact", "e2e", "frames"))
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    tmp = Path(tempfile.mkdtemp(prefix="bench_lean-"))
    lean_dir, label = new_student(args.student, tmp)
    anchor, lean = load_run(ANCHOR), load_run(lean_dir)
    rep = H.Report("The lean one-step student on a CPU: roofline, paths, tiles, end to end",
                   "cpu", packages=("onnxruntime",), about=__doc__.split("\n\n")[1], argv=argv,
                   params={"anchor": str(ANCHOR.relative_to(ROOT)), "student": label,
                           "threads (network rows)": args.threads,
                           "threads (end to end, frames)": args.e2e_threads,
                           "reps": args.reps, "native bf16": E.native_bf16("cpu")})
    tr_a = Translator(anchor, *PAIR, engine="eager")
    tr_l = Translator(lean, *PAIR)
    summary = []
    if "roofline" in only or "paths" in only:
        peak1, peak_all = gemm_peak(1), gemm_peak(args.e2e_threads)
        nominal = H.cpu_fp32_peak(1)
        net = {"anchor": network_gflop_per_mp(tr_a, 128),
               "lean": network_gflop_per_mp(tr_l, args.tile_side)}
        e2e_f = {"anchor": e2e_gflop_per_mp(tr_a, 2048, 2048),
                 "lean": e2e_gflop_per_mp(tr_l, 2048, 2048)}
        roof = [{"provider": k, "net_gflop_mp": net[k], "e2e_gflop_mp": e2e_f[k][0],
                 "tiles": e2e_f[k][1], "tile": t.tile, "overlap": t.overlap}
                for k, t in (("anchor", tr_a), ("lean", tr_l))]
        for r in roof:
            r["vs_anchor_flop"] = roof[0]["e2e_gflop_mp"] / r["e2e_gflop_mp"]
        rep.table(roof, [("student", "provider", "{}"), ("tile / overlap (px)",
                  lambda r: f"{r['tile']} / {r['overlap']}", "{}"),
                  ("network GFLOP/MP (one tile)", "net_gflop_mp", "{:.1f}"),
                  ("GFLOP/MP at 2048², every tile", "e2e_gflop_mp", "{:.1f}"),
                  ("tiles at 2048²", "tiles", "{}"),
                  ("anchor / it (FLOP)", "vs_anchor_flop", "{:.1f}x")],
                  heading="Arithmetic per megapixel",
                  intro=f"Measured fp32 GEMM peak of this machine (2048³ `torch.mm`, best "
                        f"of 5): {peak1:.0f} GFLOP/s on one thread (CPU time), {peak_all:.0f} "
                        f"GFLOP/s on {args.e2e_threads} (wall). The clock x SIMD estimate of "
                        f"one core: {nominal['gflops']:.0f} GFLOP/s ({nominal['formula']}); "
                        "a path above the measured GEMM figure runs closer to the latter.")
        summary.append(f"GFLOP/MP at 2048² (every tile): anchor {roof[0]['e2e_gflop_mp']:.0f}"
                       f", new student {roof[1]['e2e_gflop_mp']:.1f} "
                       f"({roof[1]['vs_anchor_flop']:.1f}x fewer; target >= 6x: "
                       f"{'met' if roof[1]['vs_anchor_flop'] >= 6 else 'NOT met'})")
        rep.checkpoint(args.md, args.json)
    if "paths" in only:
        rows = paths(rep, anchor, lean, args)
        for r in rows:
            if r.get("ms"):
                g = net["anchor" if r["provider"] == "anchor network" else "lean"]
                r["gflop_s"] = g / (r["ms_mp"] / 1e3)
                r["of_peak"] = r["gflop_s"] / peak1
        chosen = tr_l.engine.describe()
        s = tr_l.settings
        db = E.bf16_check(lean.model, s.tau, s.source, s.target, 128)
        rep.table(rows, [("path", "provider", "{}"), ("engine", "engine", "{}"),
                         ("CPU ms/MP", "ms_mp", "{:.0f}"),
                         ("vs eager fp32", lambda r: H.ratio(r, "vs_eager"), "{}"),
                         ("GFLOP/s", "gflop_s", "{:.0f}"),
                         ("of the 1-thread GEMM peak", "of_peak", "{:.0%}"),
                         ("first call (s)", "first_call_s", "{:.1f}"),
                         ("not run", "refused", "{}")],
                  heading=f"Execution paths: the new student's network on one "
                          f"{args.tile_side}² tile, one thread",
                  intro=f"`auto` chooses **{chosen}** here (bf16 check: {db:.1f} dB vs fp32, "
                        f"bar {E.BF16_MIN_PSNR:g} dB).")
        summary.append(f"default path here: {chosen}")
        rep.checkpoint(args.md, args.json)
    if "tiles" in only:
        rows = tile_rows(lean, args)
        rep.table(rows, [("tile", "provider", "{}"), ("tiles", "n_tiles", "{}"),
                         ("overlap", "overlap", "{}"), ("per forward", "tile_batch", "{}"),
                         ("CPU ms/MP", "ms_mp", "{:.0f}"),
                         ("vs the fastest", "vs_best", "{:.2f}x"),
                         ("plan estimate (MB)", "plan_mb", "{:.0f}"), ("engine", "engine", "{}")],
                  heading=f"Tiles: a {args.tiles_image}² translation, default engine, one "
                          "thread")
        rep.checkpoint(args.md, args.json)
    if "exact" in only:
        rows = exactness(lean)
        rep.table(rows, [("measure", "provider", "{}"), ("engine", "engine", "{}"),
                         ("value", lambda r: f"{r['value']:.3f} {r['unit']}".strip(), "{}"),
                         ("target", "target", "{}"), ("input's own", "input", "{:.3f}")],
                  heading="Exact tiles (overlap = 2 x the receptive-field halo)")
        summary += [f"{r['provider']} ({r['engine']}): {r['value']:.3f} {r['unit']} (target "
                    f"{r['target']})".strip() for r in rows]
        rep.checkpoint(args.md, args.json)
    runs = {"anchor": ANCHOR, "new": lean_dir}
    if "e2e" in only:
        rows = e2e(rep, runs, args, tmp)
        rep.table(rows, [("input", "input", "{}"), ("student", "provider", "{}"),
                         ("wall (s)", "s", "{:.1f}"), ("anchor / it", "vs_anchor", "{:.1f}x"),
                         ("peak RSS (MB)", "peak_mb", "{:.0f}"), ("not run", "refused", "{}"),
                         ("path (its stage line)", "how", "{}")],
                  heading=f"`medshift translate --size native`, {args.e2e_threads} thread(s)")
        for r in rows:
            if r["provider"] == "new" and r.get("s"):
                summary.append(f"translate --size native, {r['input']}: {r['s']:.1f} s, "
                               f"{r['vs_anchor']:.1f}x faster than the anchor (target >= 8x: "
                               f"{'met' if r['vs_anchor'] >= 8 else 'NOT met'}), peak "
                               f"{r['peak_mb']:.0f} MB (target <= 1024: "
                               f"{'met' if r['peak_mb'] <= 1024 else 'NOT met'})")
        rep.checkpoint(args.md, args.json)
    if "frames" in only:
        rows = frames(runs, args)
        rep.table(rows, [("frame", "group", "{}"), ("student", "provider", "{}"),
                         ("engine", "engine", "{}"), ("frames", "frames", "{}"),
                         ("p50 (ms)", "p50_ms", "{:.0f}"), ("p99 (ms)", "p99_ms", "{:.0f}"),
                         ("anchor / it (p50)", "vs_anchor", "{:.1f}x")],
                  heading=f"FrameTranslator, {args.e2e_threads} thread(s)")
    rep.text("\n".join(f"- {s}" for s in summary), "Against the targets")
    rep.note(H.RATIO_NOTE)
    rep.note("Absolute times on the shared development machine are inflated by other jobs: "
             "the end-to-end and frame rows are wall-clock; quote them from a quiet rerun.")
    out = rep.write(args.md, args.json)
    if args.doc and out:
        sys.path.insert(0, str(ROOT / "scripts"))
        from _blocks import fill_block

        rel = Path(out[0]).resolve().relative_to(ROOT).as_posix()
        fill_block(DOC, "lean-cpu", f"From `{rel}` ({rep.command}):\n\n"
                   + "\n".join(f"- {s}" for s in summary), required=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
