"""The one-step student vs its teacher: translation images/s, side by side, and frame latency.

Providers (the same tiny U-Net weights for the teacher and the student's network; timing does
not depend on training, so random weights are used and this runs anywhere):
    teacher_eager     anchor: the teacher's eager translation, 10 + 10 Euler steps with
                      guidance on both legs (w = 2: a 2B forward per evaluation, 40 network
                      evaluations), ``Translator(mode="eager")``
    teacher_compiled  the same through the compiled fused sampler (``mode="compiled"``: Inductor
                      with freezing, static shape)
    student           the distilled one-shot student: ONE network call, no guidance
    student_meanflow  the MeanFlow student: two network calls
CPU: B = 1 at 128 px (the demo's size) and B = 16 at 64 px (the teacher's B = 16 at 128 px costs
minutes per call here); every ratio compares providers of one (size, batch) group. Frames:
``deploy.FrameTranslator`` p50 / p99 of the student and of the fused teacher at 128 px.

    python benchmarks/bench_student.py --reps 3 --md benchmarks/results/student_cpu.md
    python benchmarks/bench_student.py --gpu --json OUT/student_gpu.json   # 512 px, bf16 (CUDA)
"""

from __future__ import annotations

import argparse
import json

import _harness as H
import pytest
import torch

from medshift_fast.deploy import FrameTranslator
from medshift_fast.models import build_model
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import LoadedRun
from medshift_fast.translate import Translator

HAS_CUDA = torch.cuda.is_available()
STEPS, TAU, W = 10, 0.6, 2.0
TEACHER = {"guidance_encode": W, "guidance_decode": W, "steps": STEPS, "solver": "euler"}
CPU_CASES = [(128, 1), (64, 16)]  # (size, batch)
GPU_CASES = [(512, 1), (512, 16)]


def make_runs(preset: str = "tiny", device: str = "cpu"):
    """(teacher run, one-shot student run, MeanFlow student run) with random non-zero weights."""
    torch.manual_seed(0)
    m = build_model(preset, num_classes=5)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    runs = [LoadedRun.from_model(m.eval().to(device))]
    for method in ("oneshot", "meanflow"):
        st = Student(StudentConfig(unet=m.config.to_dict(), method=method, pairs=((0, 3),),
                                   teacher=TEACHER))
        st.init_from_teacher(m)
        runs.append(LoadedRun.from_model(st.eval().to(device)))
    return runs


def providers(runs, size: int, batch: int, device: str, compiled: bool = True) -> dict:
    teacher, oneshot, meanflow = runs
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    kw = dict(tau=TAU, **TEACHER)
    out = {"teacher_eager": Translator(teacher, 0, 3, mode="eager", **kw)}
    if compiled:
        out["teacher_compiled"] = Translator(teacher, 0, 3, mode="compiled", batch_size=batch,
                                             channels_last=True, **kw)
    out["student"] = Translator(oneshot, 0, 3, tau=TAU)
    out["student_meanflow"] = Translator(meanflow, 0, 3, tau=TAU)
    return {k: (lambda tr=tr: tr.translate(x)) for k, tr in out.items()}


# ------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(autouse=True)
def _threads():
    with H.num_threads(None if HAS_CUDA else H.bench_threads()):
        yield


@pytest.mark.parametrize("provider", ["teacher_eager", "student", "student_meanflow"])
def test_student_vs_teacher_cpu(benchmark, provider):
    benchmark.group = "translate tiny 64x64 B1 cpu (student vs teacher)"
    step = providers(make_runs(), 64, 1, "cpu", compiled=False)[provider]
    H.pedantic(benchmark, step, "cpu", rounds=3, no_grad=True, per_second={"images_per_s": 1},
               provider=provider, size=64, batch=1)


# ---------------------------------------------------------------------------- one-shot runner
def run(device: str, reps: int, dump) -> list[dict]:
    rows = []
    runs = make_runs("tiny", device)
    for size, batch in (GPU_CASES if device == "cuda" else CPU_CASES):
        steps = providers(runs, size, batch, device)
        for fn in steps.values():  # compile / warm up outside the timing
            fn()
        res = H.time_interleaved(steps, device, reps, warmup=0, no_grad=True)
        group = [{"group": "translate", "size": size, "batch": batch, "provider": p,
                  **t.fields("ms"), "images_per_s": batch / t.median} for p, t in res.items()]
        rows += H.add_ratios(group, "teacher_eager", (), name="vs_anchor")
        for r in group:
            print(json.dumps({k: v for k, v in r.items() if not k.endswith("_samples")}),
                  flush=True)
        dump(rows)
    size = 512 if device == "cuda" else 128
    teacher, oneshot, _ = runs
    for name, run_, kw in (("student", oneshot, {}),
                           ("teacher_fused", teacher, dict(tau=TAU, **TEACHER))):
        ft = FrameTranslator(run_, 0, 3, size=size, device=device, warmup=1, **kw)
        f = torch.rand(size, size) * 2 - 1
        for _ in range(20 if name == "student" else max(3, reps)):
            ft(f)
        st = ft.latency_stats()
        rows.append({"group": "frame", "size": size, "batch": 1, "provider": name,
                     "p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"], "fps": st["fps"],
                     "frames": st["frames"]})
        dump(rows)
    return rows


ABOUT = """The distilled student (``medshift distill``) does the teacher's whole translation --
encode to tau with the source label, decode with the target label, guidance included -- in one
network evaluation without guidance at run time. Images/s of every provider of one (size, batch)
group are timed in turns (interleaved repetitions); the ratio is against the teacher's eager
10 + 10 Euler translation with guidance on both legs (40 U-Net evaluations of a 2B batch).
Compile time is excluded (warm-up). Quality (the student vs the teacher, 35 dB) is in
docs/distill.md and the demo's report, not here."""


def _fill(report, rows):
    report.reset()
    tr = [r for r in rows if r["group"] == "translate"]
    fr = [r for r in rows if r["group"] == "frame"]
    if tr:
        report.table(tr, [
            ("size", "size", "{}"), ("B", "batch", "{}"), ("provider", "provider", "{}"),
            ("ms / call [IQR]", lambda r: H.spread(r, "ms"), "{}"),
            ("images/s", "images_per_s", "{:.2f}"),
            ("vs teacher_eager [IQR]", lambda r: H.ratio(r, "vs_anchor"), "{}")],
            heading="Translation (anchor: the teacher's eager 10 + 10 Euler steps, w = 2)")
        st = [r for r in tr if r["provider"] == "student"]
        report.text("Target: the student >= 20x the eager teacher's images/s. Measured: "
                    + "; ".join(f"{r['size']} px B={r['batch']} {H.ratio(r, 'vs_anchor')}"
                                for r in st) + ".")
    if fr:
        report.table(fr, [
            ("size", "size", "{}"), ("translator", "provider", "{}"),
            ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"),
            ("fps", "fps", "{:.2f}"), ("frames", "frames", "{}")],
            heading="FrameTranslator, one frame per call")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="run on CUDA (512 px)")
    H.add_common_args(ap, reps=3, threads=H.bench_threads(), device=False)
    a = ap.parse_args(argv)
    if a.gpu and not HAS_CUDA:
        print("no CUDA device: GPU part skipped")
        return 0
    device = "cuda" if a.gpu else "cpu"
    if device == "cpu":
        H.apply_threads(a.threads)
    report = H.Report(f"One-step student vs teacher ({device})", device, about=ABOUT,
                      params={"teacher": "tiny, euler 10 + 10, w = 2 / 2", "tau": TAU,
                              "reps": a.reps}, argv=argv)

    def dump(rows):
        _fill(report, rows)
        report.checkpoint(a.md, a.json)

    rows = run(device, a.reps, dump)
    _fill(report, rows)
    report.note(H.RATIO_NOTE)
    report.write(a.md, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
