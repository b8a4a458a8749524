"""Attention benchmarks: Triton flash attention vs SDPA (flash / efficient / math) vs einsum form,
and the Triton attention block (each fusion) vs the eager block.

GPU (skipped without CUDA): forward and forward+backward TFLOP/s at U-Net shapes,
B*heads in {32, 128}, T in {256, 1024, 4096}, D in {32, 64}, bf16. Goals (issue 8): >= 0.9x
SDPA-flash and >= 3x the einsum form; the fused block >= 1.5x the eager block.
CPU: SDPA vs the einsum form at small shapes (fp32), so the file measures something here; the
Triton path does not run on the CPU (only interpreted, which is a test mode).

    pytest benchmarks/bench_attention.py                 # pytest-benchmark (JSON via make bench)
    python benchmarks/bench_attention.py --out res.json  # one-shot table with ratios vs anchors

FLOPs: attention forward 4 B H T^2 D, forward+backward 3.5x that (flash-attention convention);
block adds the qkv (6 B T C^2) and projection (2 B T C^2) GEMMs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import pytest
import torch

from medshift_fast import ops

HAS_CUDA = torch.cuda.is_available()
GPU_SHAPES = [(bh // 4, 4, t, d) for bh in (32, 128) for t in (256, 1024, 4096) for d in (32, 64)]
CPU_SHAPES = [(2, 4, 256, 32), (2, 4, 256, 64), (1, 4, 1024, 64)]
ATTN_PROVIDERS = ("triton", "sdpa_flash", "sdpa_efficient", "sdpa_math", "einsum")
BLOCK_SHAPES = [(32, 128, 16, 16), (16, 128, 32, 32), (4, 128, 64, 64), (8, 256, 32, 32)]
BLOCK_PROVIDERS = ("eager", "triton", "triton_norm", "triton_proj", "triton_all")
MODES = ("fwd", "fwd_bwd")


# --------------------------------------------------------------------------------- providers
def einsum_attention(q, k, v):
    """guided-diffusion / torchcfm QKVAttention: scores in the input dtype, softmax in fp32."""
    s = q.shape[-1] ** -0.25
    w = torch.einsum("bhtd,bhsd->bhts", q * s, k * s)
    w = torch.softmax(w.float(), dim=-1).to(w.dtype)
    return torch.einsum("bhts,bhsd->bhtd", w, v)


def _sdpa(kind):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH}[kind]

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return fn


def attention_fn(provider):
    if provider == "triton":
        return lambda q, k, v: ops.attention(q, k, v, backend="triton")
    if provider == "einsum":
        return einsum_attention
    if provider == "sdpa":
        return lambda q, k, v: ops.attention(q, k, v, backend="reference")
    return _sdpa(provider.removeprefix("sdpa_"))


def attention_flops(shape, mode):
    B, H, T, D = shape
    f = 4.0 * B * H * T * T * D
    return f * (3.5 if mode == "fwd_bwd" else 1.0)


def attention_case(provider, shape, dtype, mode, device):
    """A no-argument callable running one step (forward, or forward + backward)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(4))
    fn = attention_fn(provider)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(q, k, v)
        return step
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step():
        return torch.autograd.grad(fn(q, k, v), (q, k, v), do)

    return step


def block_case(provider, shape, mode, device, dtype=torch.bfloat16):
    """The U-Net attention block (head dim 32, GroupNorm 32 groups) under autocast(dtype)."""
    B, C, H, W = shape
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s, sc=1.0: torch.randn(*s, generator=g, device=device) * sc  # noqa: E731
    params = [r(C) * 0.1 + 1, r(C, sc=0.1), r(3 * C, C, 1, 1, sc=C**-0.5), r(3 * C, sc=0.1),
              r(C, C, 1, 1, sc=C**-0.5), r(C, sc=0.1)]
    x = r(B, C, H, W)
    fuses = {"triton": "none", "triton_norm": "norm", "triton_proj": "proj", "triton_all": "all"}
    backend, fuse = ("reference", None) if provider == "eager" else ("triton", fuses[provider])
    if mode == "fwd_bwd":
        x.requires_grad_()
        for p in params:
            p.requires_grad_()
    nw, nb, qw, qb, pw, pb = params
    dout = r(B, C, H, W)
    amp = torch.autocast(device, dtype=dtype) if device == "cuda" else contextlib.nullcontext()

    def step():
        with amp, torch.set_grad_enabled(mode == "fwd_bwd"):
            out = ops.attention_block(x, nw, nb, 32, qw, qb, pw, pb, C // 32, backend=backend,
                                      fuse=fuse)
        if mode == "fwd_bwd":
            return torch.autograd.grad(out, [x, *params], dout)
        return out

    return step


def block_flops(shape, mode):
    B, C, H, W = shape
    T = H * W
    f = 4.0 * B * T * T * C + 8.0 * B * T * C * C
    return f * (3.0 if mode == "fwd_bwd" else 1.0)


# ----------------------------------------------------------------------------------- timing
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, device, warmup=3, reps=10):
    """Median seconds per call (CUDA events on the GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def machine_info(device):
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        import triton

        info["triton"] = triton.__version__
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def _bench(benchmark, step, device, flops, **info):
    def run():
        out = step()
        _sync(device)
        return out

    benchmark.extra_info.update(machine_info(device), **info)
    benchmark.pedantic(run, warmup_rounds=2, rounds=10, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12


# ----------------------------------------------------------------------------- pytest-benchmark
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark: no CUDA device here (the "
                                "Triton kernels only run interpreted on the CPU, a test mode)")


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ATTN_PROVIDERS)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_gpu(benchmark, shape, provider, mode):
    benchmark.group = f"attention {mode} {'x'.join(map(str, shape))} bf16"
    try:
        step = attention_case(provider, shape, torch.bfloat16, mode, "cuda")
        step()
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        pytest.skip(f"{provider} cannot run this case: {str(e).splitlines()[0]}")
    _bench(benchmark, step, "cuda", attention_flops(shape, mode), provider=provider,
           shape=list(shape), dtype="bf16", mode=mode)


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", BLOCK_PROVIDERS)
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_block_gpu(benchmark, shape, provider, mode):
    benchmark.group = f"attention_block {mode} {'x'.join(map(str, shape))} bf16-autocast"
    step = block_case(provider, shape, mode, "cuda")
    _bench(benchmark, step, "cuda", block_flops(shape, mode), provider=provider,
           shape=list(shape), dtype="bf16-autocast", mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["sdpa", "einsum"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_cpu(benchmark, shape, provider, mode):
    """CPU: the reference path (SDPA) against the einsum form, fp32."""
    benchmark.group = f"attention-cpu {mode} {'x'.join(map(str, shape))} fp32"
    step = attention_case(provider, shape, torch.float32, mode, "cpu")
    _bench(benchmark, step, "cpu", attention_flops(shape, mode), provider=provider,
           shape=list(shape), dtype="fp32", mode=mode)


# ---------------------------------------------------------------------------- one-shot runner
def run_all(device, reps):
    rows = []
    if device == "cuda":
        cases = [("attention", s, p, m) for s in GPU_SHAPES for m in MODES for p in ATTN_PROVIDERS]
        cases += [("attention_block", s, p, m) for s in BLOCK_SHAPES for m in MODES
                  for p in BLOCK_PROVIDERS]
    else:
        cases = [("attention", s, p, m) for s in CPU_SHAPES for m in MODES
                 for p in ("sdpa", "einsum")]
    for op, shape, prov, mode in cases:
        row = {"op": op, "shape": list(shape), "provider": prov, "mode": mode}
        try:
            if op == "attention":
                dt = torch.bfloat16 if device == "cuda" else torch.float32
                step, flops = attention_case(prov, shape, dt, mode, device), attention_flops(
                    shape, mode)
            else:
                step, flops = block_case(prov, shape, mode, device), block_flops(shape, mode)
            sec = time_step(step, device, reps=reps)
            row.update(ms=sec * 1e3, tflops=flops / sec / 1e12)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            row["error"] = str(e).splitlines()[0][:120]
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ratio_table(rows, anchors):
    """Markdown: per (op, shape, mode), each provider's speed as a ratio vs each anchor."""
    head = "| op | shape | mode | provider | ms | TFLOP/s | "
    out = [head + " | ".join(f"vs {a}" for a in anchors) + " |", "|" + "---|" * (6 + len(anchors))]
    for r in rows:
        if "ms" not in r:
            continue
        cells = []
        for a in anchors:
            same = (x for x in rows if x["provider"] == a and x["op"] == r["op"]
                    and x["shape"] == r["shape"] and x["mode"] == r["mode"] and "ms" in x)
            ref = next(same, None)
            cells.append(f"{ref['ms'] / r['ms']:.2f}x" if ref else "-")
        out.append(f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['mode']} | "
                   f"{r['provider']} | {r['ms']:.3f} | {r['tflops']:.2f} | " + " | ".join(cells)
                   + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", help="write machine info + rows as JSON here")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if HAS_CUDA else "cpu") if args.device == "auto" else args.device
    rows = run_all(device, args.reps)
    anchors = ("sdpa_flash", "einsum", "eager") if device == "cuda" else ("einsum",)
    print(ratio_table(rows, anchors))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"machine": machine_info(device), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
