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
    python benchmarks/bench_sampler.py --md res.md          # one-shot, interleaved, ratios
    python benchmarks/bench_sampler.py --gpu --json r.json  # GPU part (skips without CUDA)

On the CPU the default is one intra-op thread (``--threads``, MEDSHIFT_BENCH_THREADS): on a
shared, loaded 2-core machine OpenMP spin-waits make 2-thread timings meaningless.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

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
    s = Sampler(model, x.shape, 0, 2, TAU, STEPS, solver, W, W, cuda_graph=False)
    steps = {
        "torchdiffeq": lambda: torchdiffeq_translate(model, x, 0, 2, method=solver),
        "reference": lambda: translate(model, x, 0, 2, TAU, W, W, STEPS, solver),
        "sampler": lambda: s.translate(x),
    }
    if compiled:  # a copy: channels_last converts the weights in place
        sc = Sampler(copy.deepcopy(model), x.shape, 0, 2, TAU, STEPS, solver, W, W,
                     cuda_graph=False, channels_last=True, compile=True)
        steps["sampler_compiled"] = lambda: sc.translate(x)
    if device == "cuda":
        g = Sampler(model, x.shape, 0, 2, TAU, STEPS, solver, W, W, cuda_graph=True)
        steps["sampler_graph"] = lambda: g.translate(x)
    return steps


# ---------------------------------------------------------------------------------- timing
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps, device, reps, warmup=1):
    """(median, min) seconds per call of each step; the steps take turns within every
    repetition, so load drifts on a shared machine hit all of them alike."""
    with torch.no_grad():
        for s in steps.values():
            for _ in range(warmup):
                s()
        _sync(device)
        times = {k: [] for k in steps}
        for _ in range(reps):
            for k, s in steps.items():
                t0 = time.perf_counter()
                s()
                _sync(device)
                times[k].append(time.perf_counter() - t0)
    return {k: (sorted(v)[len(v) // 2], min(v)) for k, v in times.items()}


def frame_latency(preset, size, frames, device, cuda_graph=None, bf16=False, compiled=False):
    """FrameTranslator latency stats over ``frames`` frames (after its warm-up)."""
    m = make_model(preset, device)
    ft = FrameTranslator(m, 0, 2, TAU, STEPS, "euler", W, W, size=size, device=device,
                         cuda_graph=cuda_graph, bf16=bf16, warmup=2, compile=compiled,
                         channels_last=compiled)
    f = torch.rand(size, size) * 2 - 1
    for _ in range(frames):
        ft(f)
    return ft.latency_stats()


def machine_info(device):
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in fh
                                   if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["threads"] = torch.get_num_threads()
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg"] = " ".join(fh.read().split()[:3])
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------- pytest-benchmark
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark: no CUDA device here")


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    if not HAS_CUDA:
        torch.set_num_threads(int(os.environ.get("MEDSHIFT_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(n)


def _bench(benchmark, step, device, rounds, **info):
    def run():
        with torch.no_grad():
            step()
        _sync(device)

    benchmark.extra_info.update(machine_info(device), **info)
    benchmark.pedantic(run, warmup_rounds=1, rounds=rounds, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = info.get("batch", 1) / benchmark.stats.stats.median


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
    m = make_model("tiny")
    ft = FrameTranslator(m, 0, 2, TAU, STEPS, "euler", W, W, size=size, warmup=1)
    f = torch.rand(size, size) * 2 - 1
    benchmark.extra_info.update(machine_info("cpu"), preset="tiny", size=size)
    benchmark.pedantic(lambda: ft(f), rounds=frames, iterations=1)
    benchmark.extra_info.update(ft.latency_stats())


@needs_cuda
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("preset,size", GPU_FRAMES, ids=lambda v: str(v))
def test_frame_latency_gpu(benchmark, preset, size, graph, bf16):
    benchmark.group = f"FrameTranslator latency {preset} {size}x{size} cuda"
    m = make_model(preset, "cuda")
    ft = FrameTranslator(m, 0, 2, TAU, STEPS, "euler", W, W, size=size, cuda_graph=graph,
                         bf16=bf16, warmup=2)
    f = torch.rand(size, size) * 2 - 1
    benchmark.extra_info.update(machine_info("cuda"), preset=preset, size=size, graph=graph,
                                bf16=bf16)
    benchmark.pedantic(lambda: ft(f), rounds=20, iterations=1)
    benchmark.extra_info.update(ft.latency_stats())


# ---------------------------------------------------------------------------- one-shot runner
def run_cpu(reps):
    rows = []
    for group, preset, cases in (("e2e", "tiny", CPU_E2E), ("overhead", "trivial", CPU_OVERHEAD)):
        m = make_model(preset)
        for solver, size in cases:
            r = reps if group == "e2e" else 4 * reps
            res = time_interleaved(e2e_steps(m, solver, size, compiled=group == "e2e"), "cpu", r)
            for prov, (med, mn) in res.items():
                rows.append(dict(group=group, preset=preset, solver=solver, size=size, batch=1,
                                 provider=prov, ms=med * 1e3, min_ms=mn * 1e3,
                                 vs_torchdiffeq=res["torchdiffeq"][0] / med,
                                 vs_torchdiffeq_min=res["torchdiffeq"][1] / mn))
                print(json.dumps(rows[-1]), flush=True)
    for size, frames in CPU_FRAMES:
        for compiled in (False, True):
            st = frame_latency("tiny", size, frames, "cpu", compiled=compiled)
            rows.append(dict(group="frame", preset="tiny", solver="euler", size=size,
                             compiled=compiled, **st))
            print(json.dumps(rows[-1]), flush=True)
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
        res = time_interleaved(steps, "cuda", reps)
        base = res.get("torchdiffeq", res["reference"])[0]
        for prov, (med, mn) in res.items():
            rows.append(dict(group="e2e", preset="tiny", solver="euler", size=256, batch=batch,
                             provider=prov, ms=med * 1e3, min_ms=mn * 1e3,
                             images_per_s=batch / med, vs_anchor=base / med))
            print(json.dumps(rows[-1]), flush=True)
        dump(rows)
    for preset, size in GPU_FRAMES:
        for graph in (False, True):
            for bf16 in (False, True):
                try:
                    st = frame_latency(preset, size, frames, "cuda", cuda_graph=graph, bf16=bf16)
                    rows.append(dict(group="frame", preset=preset, size=size, graph=graph,
                                     bf16=bf16, **st))
                except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                    rows.append(dict(group="frame", preset=preset, size=size, graph=graph,
                                     bf16=bf16, error=str(e).splitlines()[0][:200]))
                print(json.dumps(rows[-1]), flush=True)
                dump(rows)
                torch.cuda.empty_cache()
    return rows


def markdown(rows, info):
    out = [f"device: {info.get('device_name')} ({info.get('cpu', '')}), torch {info['torch']}, "
           f"threads {info.get('threads', '-')}, load average at start {info.get('loadavg', '?')}",
           "", "| group | preset | solver | size | provider | median ms | min ms | "
           "speed-up vs torchdiffeq (median) | (min) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["group"] == "frame":
            continue
        out.append(f"| {r['group']} | {r['preset']} | {r['solver']} | {r['size']} | "
                   f"{r['provider']} | {r['ms']:.1f} | {r['min_ms']:.1f} | "
                   f"{r['vs_torchdiffeq']:.2f}x | {r['vs_torchdiffeq_min']:.2f}x |")
    out += ["", "| FrameTranslator | size | frames | p50 ms | p99 ms | fps |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        if r["group"] == "frame":
            how = " compile+channels_last" if r.get("compiled") else ""
            out.append(f"| tiny euler {STEPS} steps w={W}{how} | {r['size']} | {r['frames']} | "
                       f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['fps']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="run the GPU part (needs CUDA)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--frames", type=int, default=10, help="timed frames per GPU latency case")
    ap.add_argument("--threads", type=int,
                    default=int(os.environ.get("MEDSHIFT_BENCH_THREADS", "1")))
    ap.add_argument("--json", help="write rows + machine info as JSON")
    ap.add_argument("--md", help="write the CPU table as markdown")
    a = ap.parse_args(argv)
    if a.gpu and not HAS_CUDA:
        print("no CUDA device: GPU part skipped")
        return 0
    device = "cuda" if a.gpu else "cpu"
    if device == "cpu":
        torch.set_num_threads(a.threads)
    info = machine_info(device)

    def dump(rows):  # after every case, so a cut-off run keeps what it measured
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"machine": info, "rows": rows}, fh, indent=1)

    rows = run_gpu(a.reps, a.frames, dump) if a.gpu else run_cpu(a.reps)
    dump(rows)
    if a.md and not a.gpu:
        with open(a.md, "w") as fh:
            fh.write(markdown(rows, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
