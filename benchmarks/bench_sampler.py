"""Sampler benchmarks: end-to-end translation vs an eager torchdiffeq loop, and frame latency.

Providers (same model, same steps, same time grids, guidance as one 2B forward everywhere):
    torchdiffeq  anchor: ``torchdiffeq.odeint`` (method euler / rk4) over the fixed grid, each
                 evaluation torch.cat([x, x]) -> 2B forward -> eager guidance combine
    reference    ``flow.translate`` (solvers with fused guided stages, allocating per step)
    sampler      ``flow.sampler.Sampler`` (preallocated buffers, in-place stages; eager forward)
    sampler_compiled  the same with ``compile=True, channels_last=True``: the forward through
                 torch.compile with Inductor freezing (weights pre-packed once) -- on the CPU the
                 network is ~99 % of the time, so this is where a translation gets faster
    sampler_graph  the same, captured as one CUDA graph (GPU only)

Groups:
    e2e       images/s of a whole encode + decode translation (tiny preset; CPU 32/64 px, B = 1)
    overhead  the same loop around a trivial field (a 1x1 conv): the solver loop's own cost,
              which is what the sampler removes; the network is excluded
    frame     ``deploy.FrameTranslator`` single-frame latency p50/p99 (CPU: tiny 64/128 px;
              GPU: tiny and small 512 px, 10 steps euler, guidance on, with/without CUDA graph)

Note: torchdiffeq's "rk4" is the 3/8-rule variant (4 evaluations per step, like classical RK4).

    pytest benchmarks/bench_sampler.py                      # pytest-benchmark
    python benchmarks/bench_sampler.py --reps 5 --md benchmarks/results/sampler_cpu.md
    python benchmarks/bench_sampler.py --gpu --json OUT/sampler_gpu.json  # GPU part (needs CUDA)

Anchors: ``torchdiffeq`` (e2e, overhead); for frame latency the plain fused FrameTranslator
(CPU: vs ``compile+channels_last``; GPU: eager fp32 vs CUDA graph and bf16).

On the CPU the default is one intra-op thread (``--threads``, MEDSHIFT_BENCH_THREADS): on a
shared, loaded 2-core machine OpenMP spin-waits make 2-thread timings meaningless.
"""

from __future__ import annotations

import argparse
import copy
import json

import _harness as H
import pytest
import torch
from torch import nn

from medshift_fast.deploy import FrameTranslator
from medshift_fast.flow import translate
from medshift_fast.flow.sampler import Sampler
from medshift_fast.models import build_model

HAS_CUDA = torch.cuda.is_available()
STEPS, TAU, W = 10, 0.6, 2.0
CPU_E2E = [("euler", 32), ("euler", 64), ("rk4", 32)]  # (solver, size), B = 1
CPU_OVERHEAD = [("euler", 64), ("rk4", 64), ("euler", 256)]
CPU_FRAMES = [(64, 10), (128, 4)]  # (size, frames)
GPU_FRAMES = [("tiny", 64), ("small", 64), ("tiny", 512), ("small", 512)]  # 64: launch-bound


# --------------------------------------------------------------------------------- models
class TrivialField(nn.Module):
    """v = conv1x1(x) + t + emb(y): near-free, so timings show the solver loop's own cost."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.conv = nn.Conv2d(1, 1, 1)
        self.emb = nn.Embedding(num_classes + 1, 1)

    def forward(self, x, t, y):
        return self.conv(x) + t.view(-1, 1, 1, 1) + self.emb(y).view(-1, 1, 1, 1)


def make_model(preset="tiny", device="cpu"):
    torch.manual_seed(0)
    if preset == "trivial":
        return TrivialField().eval().to(device)
    m = build_model(preset, num_classes=3)
    with torch.no_grad():  # trained-looking (non-zero) output layers
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval().to(device)


def torchdiffeq_translate(model, x, source, target, tau=TAU, steps=STEPS, method="euler", w=W):
    """The anchor: an eager torchdiffeq loop with guidance as one 2B forward."""
    from torchdiffeq import odeint

    b = x.shape[0]

    def field(y):
        yy = torch.tensor([y] * b + [model.num_classes] * b, device=x.device)

        def f(t, xt):
            v = model(torch.cat([xt, xt]), t.expand(2 * b).float(), yy)
            vc, vu = v[:b], v[b:]
            return vu + w * (vc - vu)

        return f

    kw = dict(device=x.device, dtype=torch.float32)
    z = odeint(field(source), x, torch.linspace(1.0, tau, steps + 1, **kw), method=method)[-1]
    return odeint(field(target), z, torch.linspace(tau, 1.0, steps + 1, **kw), method=method)[-1]


def e2e_steps(model, solver, size, batch=1, device="cpu", compiled=False):
    """{provider: no-argument callable translating one batch}."""
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    kw = dict(tau=TAU, steps=STEPS, solver=solver, guidance_encode=W, guidance_decode=W)
    s = Sampler(model, x.shape, 0, 2, **kw, cuda_graph=False)
    steps = {
        "torchdiffeq": lambda: torchdiffeq_translate(model, x, 0, 2, method=solver),
        "reference": lambda: translate(model, x, 0, 2, **kw),
        "sampler": lambda: s.translate(x),
    }
    if compiled:  # a copy: channels_last converts the weights in place
        sc = Sampler(copy.deepcopy(model), x.shape, 0, 2, **kw, cuda_graph=False,
                     channels_last=True, compile=True)
        steps["sampler_compiled"] = lambda: sc.translate(x)
    if device == "cuda":
        g = Sampler(model, x.shape, 0, 2, **kw, cuda_graph=True)
        steps["sampler_graph"] = lambda: g.translate(x)
    return steps


def frame_translator(preset, size, device, cuda_graph=None, bf16=False, compiled=False):
    """A warmed-up ``deploy.FrameTranslator`` (euler, STEPS steps, w = W) of a preset model."""
    m = make_model(preset, device)
    return FrameTranslator(m, 0, 2, TAU, STEPS, "euler", W, W, size=size, device=device,
                           cuda_graph=cuda_graph, bf16=bf16, warmup=2, compile=compiled,
                           channels_last=compiled)


# ------------------------------------------------------------------------- pytest-benchmark
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark: no CUDA device here")


@pytest.fixture(autouse=True)
def _threads():
    with H.num_threads(None if HAS_CUDA else H.bench_threads()):
        yield


def _bench(benchmark, step, device, rounds, **info):
    H.pedantic(benchmark, step, device, rounds=rounds, no_grad=True,
               per_second={"images_per_s": info.get("batch", 1)}, **info)


@pytest.mark.parametrize("provider", ["torchdiffeq", "reference", "sampler", "sampler_compiled"])
@pytest.mark.parametrize("solver,size", CPU_E2E, ids=lambda v: str(v))
def test_e2e_cpu(benchmark, solver, size, provider):
    benchmark.group = f"e2e translate tiny {size}x{size} B1 {solver} {STEPS} steps cpu"
    step = e2e_steps(make_model("tiny"), solver, size,
                     compiled=provider == "sampler_compiled")[provider]
    _bench(benchmark, step, "cpu", 3, provider=provider, solver=solver, size=size, batch=1)


@pytest.mark.parametrize("provider", ["torchdiffeq", "reference", "sampler"])
@pytest.mark.parametrize("solver,size", CPU_OVERHEAD, ids=lambda v: str(v))
def test_overhead_cpu(benchmark, solver, size, provider):
    benchmark.group = f"loop overhead (trivial field) {size}x{size} B1 {solver} cpu"
    step = e2e_steps(make_model("trivial"), solver, size)[provider]
    _bench(benchmark, step, "cpu", 10, provider=provider, solver=solver, size=size, batch=1)


@pytest.mark.parametrize("size,frames", CPU_FRAMES)
def test_frame_latency_cpu(benchmark, size, frames):
    benchmark.group = "FrameTranslator latency cpu"
    ft = frame_translator("tiny", size, "cpu")
    f = torch.rand(size, size) * 2 - 1
    H.pedantic(benchmark, lambda: ft(f), "cpu", rounds=frames, warmup_rounds=0,
               per_second={"fps": 1}, preset="tiny", size=size)
    benchmark.extra_info.update(ft.latency_stats())


@needs_cuda
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("preset,size", GPU_FRAMES, ids=lambda v: str(v))
def test_frame_latency_gpu(benchmark, preset, size, graph, bf16):
    benchmark.group = f"FrameTranslator latency {preset} {size}x{size} cuda"
    ft = frame_translator(preset, size, "cuda", cuda_graph=graph, bf16=bf16)
    f = torch.rand(size, size) * 2 - 1
    H.pedantic(benchmark, lambda: ft(f), "cuda", rounds=20, warmup_rounds=0,
               per_second={"fps": 1}, preset=preset, size=size, graph=graph, bf16=bf16)
    benchmark.extra_info.update(ft.latency_stats())


# ---------------------------------------------------------------------------- one-shot runner
def _group_rows(res, anchor, **fields):
    """Rows of one interleaved group: timings, images/s and the ratio vs ``anchor``."""
    batch = fields.get("batch", 1)
    rows = [{**fields, "provider": p, **t.fields("ms"), "images_per_s": batch / t.median}
            for p, t in res.items()]
    return H.add_ratios(rows, anchor, (), name="vs_anchor")


def _frame_group(variants, size, frames, device, dump, rows, **fields):
    """Interleave single-frame calls of several FrameTranslators (the first is the anchor)."""
    fts, errors = {}, {}
    for name, kw in variants.items():
        try:
            fts[name] = frame_translator(fields["preset"], size, device, **kw)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            errors[name] = str(e).splitlines()[0][:200]
    f = torch.rand(size, size) * 2 - 1
    res = H.time_interleaved({k: (lambda ft=ft: ft(f)) for k, ft in fts.items()}, device,
                             frames, warmup=1)
    group = [{"group": "frame", **fields, "size": size, "provider": k, **t.fields("ms"),
              "fps": 1 / t.median} for k, t in res.items()]
    group += [{"group": "frame", **fields, "size": size, "provider": k, "error": e}
              for k, e in errors.items()]
    rows += H.add_ratios(group, next(iter(variants)), (), name="vs_anchor")
    for r in group:
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_samples")}), flush=True)
    dump(rows)
    del fts
    if device == "cuda":
        torch.cuda.empty_cache()


def run_cpu(reps, dump=lambda rows: None):
    rows = []
    for group, preset, cases in (("e2e", "tiny", CPU_E2E), ("overhead", "trivial", CPU_OVERHEAD)):
        m = make_model(preset)
        for solver, size in cases:
            r = reps if group == "e2e" else 4 * reps
            res = H.time_interleaved(e2e_steps(m, solver, size, compiled=group == "e2e"), "cpu",
                                     r, no_grad=True)
            rows += _group_rows(res, "torchdiffeq", group=group, preset=preset, solver=solver,
                                size=size, batch=1)
            dump(rows)
    for size, frames in CPU_FRAMES:
        _frame_group({"fused": {}, "compile+channels_last": {"compiled": True}}, size, frames,
                     "cpu", dump, rows, preset="tiny", solver="euler")
    return rows


def run_gpu(reps, frames=10, dump=lambda rows: None):
    rows = []
    m = make_model("tiny", "cuda")
    for batch in (1, 8):
        steps = e2e_steps(m, "euler", 256, batch, "cuda")
        try:
            import torchdiffeq  # noqa: F401
        except ImportError:
            steps.pop("torchdiffeq")
        res = H.time_interleaved(steps, "cuda", reps, no_grad=True)
        rows += _group_rows(res, "torchdiffeq" if "torchdiffeq" in res else "reference",
                            group="e2e", preset="tiny", solver="euler", size=256, batch=batch)
        dump(rows)
    variants = {f"{'graph' if g else 'eager'} {'bf16' if b else 'fp32'}":
                {"cuda_graph": g, "bf16": b} for g in (False, True) for b in (False, True)}
    for preset, size in GPU_FRAMES:
        _frame_group(variants, size, frames, "cuda", dump, rows, preset=preset, solver="euler")
    return rows


ABOUT = """End-to-end translation (encode 1 -> tau with the source label, decode tau -> 1 with
the target label) by the library's paths against an eager torchdiffeq loop with the same model,
steps and time grids (the anchor), the solver loop's own cost around a near-free field, and
`deploy.FrameTranslator` single-frame latency. Guidance is one 2B forward per evaluation in
every provider. Compile time is excluded (warm-up)."""


def _fill(report, rows):
    report.reset()
    loop = [r for r in rows if r["group"] != "frame"]
    frame = [r for r in rows if r["group"] == "frame"]
    if loop:
        report.table(loop, [
            ("group", "group", "{}"), ("preset", "preset", "{}"), ("solver", "solver", "{}"),
            ("size", "size", "{}"), ("B", "batch", "{}"), ("provider", "provider", "{}"),
            ("ms [IQR]", lambda r: H.spread(r, "ms"), "{}"), ("min ms", "ms_min", "{:.1f}"),
            ("images/s", "images_per_s", "{:.2f}"),
            ("vs anchor [IQR]", lambda r: H.ratio(r, "vs_anchor"), "{}")],
            heading="Translation loop (anchor: torchdiffeq)",
            intro="`e2e`: a whole translation with the tiny U-Net; `overhead`: the same loop "
                  "around a trivial 1x1-conv field (the solver loop's own cost).")
    if frame:
        report.table(frame, [
            ("preset", "preset", "{}"), ("size", "size", "{}"), ("variant", "provider", "{}"),
            ("ms / frame [IQR]", lambda r: H.spread(r, "ms"), "{}"),
            ("min ms", "ms_min", "{:.1f}"), ("fps", "fps", "{:.2f}"),
            ("vs first variant [IQR]", lambda r: H.ratio(r, "vs_anchor"), "{}"),
            ("error", "error", "{}")],
            heading=f"FrameTranslator, euler {STEPS} steps, w = {W}, one frame per call",
            intro="The variants of one size are built side by side and called in turns; the "
                  "ratio is against the first variant of the size.")
    comp = [r for r in loop if r["provider"] == "sampler_compiled"]
    if comp:
        report.text("Issue 7 target (CPU): end-to-end >= 1.3x torchdiffeq. `sampler_compiled`: "
                    + "; ".join(f"{r['solver']} {r['size']} px {H.ratio(r, 'vs_anchor')}"
                                for r in comp) + ".")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="run the GPU part (needs CUDA)")
    H.add_common_args(ap, reps=5, threads=H.bench_threads(), device=False)
    ap.add_argument("--frames", type=int, default=10, help="timed frames per GPU latency case")
    a = ap.parse_args(argv)
    if a.gpu and not HAS_CUDA:
        print("no CUDA device: GPU part skipped")
        return 0
    device = "cuda" if a.gpu else "cpu"
    if device == "cpu":
        H.apply_threads(a.threads)
    report = H.Report(f"Sampler ({device}): translation vs an eager torchdiffeq loop, and frame "
                      "latency", device, packages=("torchdiffeq",), about=ABOUT,
                      params={"steps per leg": STEPS, "tau": TAU, "w": W, "reps": a.reps,
                              **({"frames": a.frames} if a.gpu else {})},
                      argv=argv)

    def dump(rows):  # after every case, so a cut-off run keeps what it measured
        _fill(report, rows)
        report.checkpoint(a.md, a.json)

    rows = run_gpu(a.reps, a.frames, dump) if a.gpu else run_cpu(a.reps, dump)
    _fill(report, rows)
    report.note("torchdiffeq's rk4 is the 3/8-rule variant (4 evaluations per step, like "
                "classical RK4).")
    report.note(H.RATIO_NOTE)
    report.write(a.md, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
