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
    python benchmarks/bench_guided_stage.py --threads 1 --md benchmarks/results/guided_stage_cpu.md
    python benchmarks/bench_guided_stage.py --device cuda --json OUT/guided_stage_gpu.json

Derived figure: GB/s = bytes the fused pass must move (inputs read + outputs written) / time, for
every provider (so the eager form's GB/s is "effective", not what it actually moves).
"""

from __future__ import annotations

import argparse

import _harness as H
import pytest
import torch

from medshift_fast import _backend, ops

HAS_CUDA = torch.cuda.is_available()
CPU_SHAPES = [(8, 1, 256, 256), (1, 1, 512, 512), (1, 4, 64, 64)]
GPU_SHAPES = [(8, 1, 256, 256), (1, 1, 512, 512), (32, 4, 512, 512)]
STAGES = ("euler", "rk4_mid")
W, H_STEP, C = 2.0, 0.05, 0.05 / 3


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
        return lambda: ops.guided_stage(x, vc, vu, W, H_STEP, out=out, backend=backend)
    return lambda: ops.guided_stage(x, vc, vu, W, H_STEP, acc, C, out=out, acc_out=acc_out,
                                    backend=backend)


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def copy_bytes(shape, dtype):
    return 2 * _numel(shape) * torch.empty((), dtype=dtype).element_size()


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
                    tag = f"{device}-{stage}-{H.shape_str(shape)}-{str(dt)[6:]}-{prov}"
                    out.append(pytest.param(device, stage, shape, dt, prov, id=tag))
    return out


@pytest.mark.parametrize("device,stage,shape,dtype,provider", _param_cases())
def test_guided_stage(benchmark, device, stage, shape, dtype, provider):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device")
    if provider not in _providers(device):
        pytest.skip(f"provider {provider} not available here")
    step = case(provider, stage, shape, dtype, device)
    benchmark.group = f"guided_stage {device} {stage} {H.shape_str(shape)} {dtype}"
    nbytes = copy_bytes(shape, dtype) if provider == "copy" else stage_bytes(
        stage, _numel(shape), dtype)
    H.pedantic(benchmark, step, device, rounds=30, warmup_rounds=3, iterations=5,
               per_second={"gb_per_s": nbytes / 1e9}, provider=provider, stage=stage,
               shape=list(shape), dtype=str(dtype))


# ---------------------------------------------------------------------------- one-shot runner
def run_all(device, reps, report=None, out=(None, None)):
    """Rows of every (shape, dtype, stage): the providers interleaved, ratios vs reference."""
    rows = []
    provs = _providers(device)
    for shape, dt in _shapes_dtypes(device):
        n = _numel(shape)
        for stage in STAGES:
            steps = {p: case(p, stage, shape, dt, device) for p in provs}
            inner = max(1, min(50, (1 << 22) // n))
            res = H.time_interleaved(steps, device, reps, warmup=3, inner=inner)
            group = []
            for p, t in res.items():
                nbytes = copy_bytes(shape, dt) if p == "copy" else stage_bytes(stage, n, dt)
                group.append({"stage": stage, "shape": list(shape), "dtype": str(dt)[6:],
                              "provider": p, "inner": inner, **t.fields("us"),
                              "gb_per_s": nbytes / t.median / 1e9})
            H.add_ratios(group, "reference", ("stage", "shape", "dtype"), key="us")
            if "copy" in res:  # the fraction of a device-to-device copy's bandwidth
                copy_bw = copy_bytes(shape, dt) / res["copy"].median / 1e9
                for r in group:
                    r["frac_of_copy_bw"] = r["gb_per_s"] / copy_bw
            rows += group
            if report is not None:  # a cut-off run keeps what it measured
                _fill(report, rows, device)
                report.checkpoint(*out)
    return rows


def _fill(report, rows, device):
    report.reset()
    cols = [("stage", "stage", "{}"), ("shape", "shape", "{}"), ("dtype", "dtype", "{}"),
            ("provider", "provider", "{}"), ("us [IQR]", lambda r: H.spread(r, "us"), "{}"),
            ("min us", "us_min", "{:.1f}"), ("GB/s (median)", "gb_per_s", "{:.1f}"),
            ("speed-up vs reference [IQR]", lambda r: H.ratio(r, "vs_reference"), "{}")]
    if device == "cuda":
        cols.append(("of copy BW", "frac_of_copy_bw", "{:.0%}"))
    report.table(rows, cols)
    goal = [r for r in rows if r["shape"] == [8, 1, 256, 256] and r["dtype"] == "float32"
            and r["provider"] in ("cpp", "cpp_out", "cuda", "cuda_out", "triton", "triton_out")]
    if goal:
        report.text("Issue 7 goal (fused >= 2x the eager form at 8x1x256x256 fp32): " + "; ".join(
            f"{r['provider']} {r['stage']} {H.ratio(r, 'vs_reference')}" for r in goal) + ".")


ABOUT = """The fused guided ODE stage (`ops.guided_stage`) against the eager torch ops it replaces
(`reference`, the anchor). Stages (w = 2): `euler` = x + h k (reads x, v_cond, v_uncond; writes
1), `rk4_mid` = x + h k and acc + c k (reads 4, writes 2). `cpp` allocates its outputs like the
reference; `cpp_out` writes preallocated `out=`/`acc_out=` buffers (how the solvers use it); on a
GPU also cuda / triton (and `_out`) and `copy`, a device-to-device copy: the bandwidth yardstick.
GB/s = bytes the fused pass must move / median time (for the reference an "effective" figure).
Times are per call (each sample the mean of `inner` back-to-back calls)."""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_common_args(ap, reps=21)
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    device = H.resolve_device(args.device)
    report = H.Report(f"guided_stage ({device}): fused kernels vs the eager torch ops", device,
                      about=ABOUT, params={"reps": args.reps, "w": W, "h": H_STEP, "c": C},
                      argv=argv)
    rows = run_all(device, args.reps, report, (args.md, args.json))
    _fill(report, rows, device)
    report.note(H.RATIO_NOTE)
    report.write(args.md, args.json)


if __name__ == "__main__":
    main()
