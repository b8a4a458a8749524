"""The lean one-step student's frame latency on a GPU (issue 30), for the lent-GPU run.

``FrameTranslator`` over the new student (``bench_lean.new_student``: the shipped lean run, or
the default LeanConfig with random weights) at 512², 1024² and 2048² (the last tiled in 512-px
tiles and whole), fp32 and bf16, engines eager / cuda_graph / compile; p50 / p99 ms per frame
over ``--frames`` frames after a warm-up (graph capture, compilation). Every case is bounded in
time (``--case-timeout``) and the report is written after every case (a cut-off run keeps what
it measured). ``benchmarks/gpu/run_gpu_checks.sh`` runs it; its ``--dry-run`` runs this script
on the CPU with tiny sizes (``--device cpu``: engines eager and compile; cuda_graph is reported
as not run), which ``tests/test_gpu_script.py`` does in CI.

    python benchmarks/bench_lean_gpu.py --json OUT/lean_frames_gpu.json
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import _harness as H
import torch

PAIR = ("real_low", "real_exposure")


class _Timeout(Exception):
    pass


def _alarm(seconds: float):
    def handler(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(0.0, float(seconds)))


def case(run_dir: Path, side: int, tile, engine: str, bf16: bool, device: str,
         frames: int) -> dict:
    """One FrameTranslator: p50 / p99 over ``frames`` frames (warm-up excluded)."""
    from medshift_fast.deploy import FrameTranslator

    t0 = time.perf_counter()
    ft = FrameTranslator(str(run_dir), *PAIR, size=side, any_size=True, device=device,
                         engine=engine, bf16=bf16, tile=tile, warmup=2)
    build = time.perf_counter() - t0
    frame = (torch.rand(side, side, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8)
    frame = frame.to(device)
    for _ in range(frames):
        ft(frame)
    st = ft.latency_stats()
    return {"p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"], "frames": st["frames"],
            "fps": st["fps"], "build_s": build, "engine_used": ft.translator.engine.describe(),
            "tiles": ft.plan.n_tiles}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--student", help="the new student's run (default: bench_lean's)")
    ap.add_argument("--sides", default="512,1024,2048")
    ap.add_argument("--tiled", default="2048", help="sides also run in --tile px tiles")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--engines", default="eager,cuda_graph,compile")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--case-timeout", type=float, default=90.0, help="seconds per case")
    H.add_output_args(ap)
    a = ap.parse_args(argv)
    from bench_lean import new_student

    run_dir, label = new_student(a.student, Path(tempfile.mkdtemp(prefix="lean_gpu-")))
    rep = H.Report("The lean one-step student: frame latency", a.device,
                   about=__doc__.split("\n\n")[1], argv=argv,
                   params={"student": label, "frames": a.frames, "tile": a.tile})
    sides = [int(s) for s in a.sides.split(",") if s]
    tiled = {int(s) for s in a.tiled.split(",") if s}
    rows = []
    for side in sides:
        for tile in ([None, a.tile] if side in tiled else [None]):
            for prec in a.precisions.split(","):
                for eng in a.engines.split(","):
                    r = {"provider": eng, "group": f"{side}² {'tiled' if tile else 'whole'} "
                         f"{prec}", "side": side, "tile": tile or "whole",
                         "precision": prec}
                    if eng == "cuda_graph" and torch.device(a.device).type != "cuda":
                        r["refused"] = "needs CUDA"
                    else:
                        try:
                            _alarm(a.case_timeout)
                            r.update(case(run_dir, side, tile or "auto", eng, prec == "bf16",
                                          a.device, a.frames))
                        except _Timeout:
                            r["refused"] = f"over the {a.case_timeout:.0f} s limit"
                        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                            r["refused"] = f"{type(exc).__name__}: {str(exc)[:150]}"
                        finally:
                            _alarm(0)
                    rows.append(r)
                    print(r, flush=True)
                    rep.reset()
                    H.add_ratios(rows, "eager", ["group"], key="p50_ms")
                    rep.table(rows, [("case", "group", "{}"), ("engine", "provider", "{}"),
                                     ("p50 (ms)", "p50_ms", "{:.2f}"),
                                     ("p99 (ms)", "p99_ms", "{:.2f}"),
                                     ("eager / it (p50)", lambda r: H.ratio(r, "vs_eager"),
                                      "{}"), ("tiles", "tiles", "{}"),
                                     ("build (s)", "build_s", "{:.1f}"),
                                     ("used", "engine_used", "{}"),
                                     ("not run", "refused", "{}")])
                    rep.checkpoint(a.md, a.json)
    rep.write(a.md, a.json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
