"""Fused guided ODE stage (ops.guided_stage) vs the eager torch ops it replaces.

The eager form (the reference, anchor) makes about five memory passes per stage (sub, mul, add,
mul, add, plus allocations); the fused kernels read each input once and write each output once.
Stages measured (w = 2, guidance on):
    euler:   x_new = x + h k                          (reads x, v_cond, v_uncond; writes 1)
    rk4_mid: x_new = x + h k, acc_new = acc + c k     (reads 4; writes 2) - the heaviest stage
Providers: reference (eager, anchor), cpp (allocates like the reference), cpp_out (preallocated
outputs, in place: out=x is not used so every rep sees the same inputs); on a GPU also cuda,
cuda_out, triton, triton_out and ``copy`` (a device-to-device copy of one tensor: the bandwidth
yardstick of issue 7, fused >= 80 % of it). Goal on the CPU (issue 7): fused >= 2x the eager form
at 8x1x256x256 fp32.

    pytest benchmarks/bench_guided_stage.py                  # pytest-benchmark (JSON: make bench)
    python benchmarks/bench_guided_stage.py --md out.md      # one-shot, interleaved, ratio table

Derived figure: GB/s = bytes the fused pass must move (inputs read + outputs written) / time, for
every provider (so the eager form's GB/s is "effective", not what it actually moves).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import pytest
import torch

from medshift_fast import _backend, ops

HAS_CUDA = torch.cuda.is_available()
CPU_SHAPES = [(8, 1, 256, 256), (1, 1, 512, 512), (1, 4, 64, 64)]
GPU_SHAPES = [(8, 1, 256, 256), (1, 1, 512, 512), (32, 4, 512, 512)]
STAGES = ("euler", "rk4_mid")
W, H, C = 2.0, 0.05, 0.05 / 3


def _providers(device):
    if device == "cuda":
        names = ["reference", "copy"]
        if _backend.is_available("cuda") and "cuda" in ops.ode.supported_backends(
                torch.zeros(1, device="cuda"), torch.zeros(1, device="cuda")):
            names += ["cuda", "cuda_out"]
        if _backend.triton_importable():
            names += ["triton", "triton_out"]
        return names
    names = ["reference"]
    if "cpp" in ops.ode.supported_backends(torch.zeros(1), torch.zeros(1)):
        names += ["cpp", "cpp_out"]
    return names


def stage_bytes(stage, numel, dtype):
    es = torch.empty((), dtype=dtype).element_size()
    return numel * es * (4 if stage == "euler" else 6)


def case(provider, stage, shape, dtype, device):
    """A no-argument callable running one stage with ``provider``."""
    g = torch.Generator(device=device).manual_seed(0)
    x, vc, vu, acc = (torch.randn(shape, generator=g, device=device, dtype=dtype)
                      for _ in range(4))
    if provider == "copy":
        dst = torch.empty_like(x)
        return lambda: dst.copy_(x)
    backend = provider.removesuffix("_out")
    out = torch.empty_like(x) if provider.endswith("_out") else None
    acc_out = torch.empty_like(x) if provider.endswith("_out") else None
    if stage == "euler":
        return lambda: ops.guided_stage(x, vc, vu, W, H, out=out, backend=backend)
    return lambda: ops.guided_stage(x, vc, vu, W, H, acc, C, out=out, acc_out=acc_out,
                                    backend=backend)


def copy_bytes(shape, dtype):
    n = 1
    for s in shape:
        n *= s
    return 2 * n * torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------- timing
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_once(step, device):
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def time_interleaved(steps, device, reps, inner):
    """(median, min) seconds per call of each step; the steps take turns, so load drifts hit all
    alike. The minimum is the figure to trust on a shared, loaded machine."""
    for s in steps.values():
        for _ in range(3):
            s()
    _sync(device)
    times = {k: [] for k in steps}
    for _ in range(reps):
        for k, s in steps.items():
            times[k].append(_time_once(lambda s=s: [s() for _ in range(inner)], device) / inner)
    return {k: (sorted(v)[len(v) // 2], min(v)) for k, v in times.items()}


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
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


# ----------------------------------------------------------------------------- pytest-benchmark
def _shapes_dtypes(device):
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    dts = (torch.float32, torch.bfloat16)
    return [(s, d) for s in shapes for d in dts]


def _param_cases():
    out = []
    for device in ("cpu", "cuda"):
        for shape, dt in _shapes_dtypes(device):
            for stage in STAGES:
                for prov in ("reference", "copy", "cpp", "cpp_out", "cuda", "cuda_out", "triton",
                             "triton_out"):
                    gpu_only = prov in ("copy", "cuda", "cuda_out", "triton", "triton_out")
                    if (device == "cpu" and gpu_only) or (device == "cuda" and "cpp" in prov):
                        continue
                    tag = f"{device}-{stage}-{'x'.join(map(str, shape))}-{str(dt)[6:]}-{prov}"
                    out.append(pytest.param(device, stage, shape, dt, prov, id=tag))
    return out


@pytest.mark.parametrize("device,stage,shape,dtype,provider", _param_cases())
def test_guided_stage(benchmark, device, stage, shape, dtype, provider):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device")
    if provider not in _providers(device):
        pytest.skip(f"provider {provider} not available here")
    step = case(provider, stage, shape, dtype, device)
    benchmark.group = f"guided_stage {device} {stage} {'x'.join(map(str, shape))} {dtype}"

    def run():
        out = step()
        _sync(device)
        return out

    benchmark.extra_info.update(machine_info(device), provider=provider, stage=stage,
                                shape=list(shape), dtype=str(dtype))
    benchmark.pedantic(run, warmup_rounds=3, rounds=30, iterations=5)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
        return
    n = 1
    for s in shape:
        n *= s
    nbytes = copy_bytes(shape, dtype) if provider == "copy" else stage_bytes(stage, n, dtype)
    benchmark.extra_info["gb_per_s"] = nbytes / benchmark.stats.stats.median / 1e9


# ---------------------------------------------------------------------------- one-shot runner
def run_all(device, reps):
    rows = []
    provs = _providers(device)
    for shape, dt in _shapes_dtypes(device):
        n = 1
        for s in shape:
            n *= s
        for stage in STAGES:
            steps = {p: case(p, stage, shape, dt, device) for p in provs}
            inner = max(1, min(50, (1 << 22) // n))
            res = time_interleaved(steps, device, reps, inner)
            med = {k: v[0] for k, v in res.items()}
            best = {k: v[1] for k, v in res.items()}
            for p, sec in med.items():
                nbytes = copy_bytes(shape, dt) if p == "copy" else stage_bytes(stage, n, dt)
                row = {"stage": stage, "shape": list(shape), "dtype": str(dt)[6:], "provider": p,
                       "us": sec * 1e6, "us_min": best[p] * 1e6, "gb_per_s": nbytes / sec / 1e9,
                       "speedup_vs_reference": med["reference"] / sec,
                       "speedup_vs_reference_min": best["reference"] / best[p]}
                if "copy" in med:
                    row["frac_of_copy_bw"] = row["gb_per_s"] / (copy_bytes(shape, dt)
                                                                 / med["copy"] / 1e9)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def markdown(rows, info):
    gpu = any("frac_of_copy_bw" in r for r in rows)
    lines = [f"device: {info.get('device_name')} {info.get('cpu', '')}, torch {info['torch']}, "
             f"threads {info.get('threads', '-')}, load average at start "
             f"{info.get('loadavg', '-')}", "",
             "| stage | shape | dtype | provider | median us | min us | GB/s (median) | "
             "speed-up vs reference (median) | (min) |" + (" of copy BW |" if gpu else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in rows:
        cell = f" {r['frac_of_copy_bw']:.0%} |" if "frac_of_copy_bw" in r else ""
        lines.append(f"| {r['stage']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | "
                     f"{r['provider']} | {r['us']:.1f} | {r['us_min']:.1f} | "
                     f"{r['gb_per_s']:.1f} | {r['speedup_vs_reference']:.2f}x | "
                     f"{r['speedup_vs_reference_min']:.2f}x |" + cell)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="write machine info + rows as JSON here")
    ap.add_argument("--md", help="write the markdown table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if HAS_CUDA else "cpu") if args.device == "auto" else args.device
    info = machine_info(device)
    rows = run_all(device, args.reps)
    table = markdown(rows, info)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": rows}, fh, indent=1)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
