"""Attention benchmarks: Triton flash attention vs SDPA (flash / efficient / math) vs einsum form,
and the Triton attention block (each fusion) vs the eager block.

GPU (skipped without CUDA): forward and forward+backward TFLOP/s at U-Net shapes,
B*heads in {32, 128}, T in {256, 1024, 4096}, D in {32, 64}, bf16. Goals (issue 8): >= 0.9x
SDPA-flash and >= 3x the einsum form; the fused block >= 1.5x the eager block.
CPU: SDPA vs the einsum form at small shapes (fp32), so the file measures something here; the
Triton path does not run on the CPU (only interpreted, which is a test mode).

    pytest benchmarks/bench_attention.py                   # pytest-benchmark (JSON via make bench)
    python benchmarks/bench_attention.py --md res.md       # one-shot, interleaved, ratio tables
    python benchmarks/bench_attention.py --device cuda --json OUT/attention_gpu.json

Anchors: ``einsum`` (the attention of guided-diffusion / torchcfm) and, on the GPU, also
``sdpa_flash``; the block's anchor is the ``eager`` block.

FLOPs: attention forward 4 B H T^2 D, forward+backward 3.5x that (flash-attention convention);
block adds the qkv (6 B T C^2) and projection (2 B T C^2) GEMMs.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import _harness as H
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


def _bench(benchmark, step, device, flops, **info):
    H.pedantic(benchmark, step, device, rounds=10, warmup_rounds=2,
               per_second={"tflops": flops / 1e12}, **info)


# ----------------------------------------------------------------------------- pytest-benchmark
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark: no CUDA device here (the "
                                "Triton kernels only run interpreted on the CPU, a test mode)")


def _gpu_params():
    out = [("attention", s, p, m) for s in GPU_SHAPES for p in ATTN_PROVIDERS for m in MODES]
    out += [("attention_block", s, p, m) for s in BLOCK_SHAPES for p in BLOCK_PROVIDERS
            for m in MODES]
    return [pytest.param(*c, id=f"{c[0]}-{H.shape_str(c[1])}-{c[2]}-{c[3]}") for c in out]


@needs_cuda
@pytest.mark.parametrize("op,shape,provider,mode", _gpu_params())
def test_attention_gpu(benchmark, op, shape, provider, mode):
    """bf16 attention (every provider) and the bf16-autocast attention block (every fusion)."""
    dtype = "bf16" if op == "attention" else "bf16-autocast"
    benchmark.group = f"{op} {mode} {H.shape_str(shape)} {dtype}"
    try:
        if op == "attention":
            step = attention_case(provider, shape, torch.bfloat16, mode, "cuda")
        else:
            step = block_case(provider, shape, mode, "cuda")
        step()
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        pytest.skip(f"{provider} cannot run this case: {str(e).splitlines()[0]}")
    flops = (attention_flops if op == "attention" else block_flops)(shape, mode)
    _bench(benchmark, step, "cuda", flops, provider=provider, shape=list(shape), dtype=dtype,
           mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["sdpa", "einsum"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=H.shape_str)
def test_attention_cpu(benchmark, shape, provider, mode):
    """CPU: the reference path (SDPA) against the einsum form, fp32."""
    benchmark.group = f"attention-cpu {mode} {H.shape_str(shape)} fp32"
    step = attention_case(provider, shape, torch.float32, mode, "cpu")
    _bench(benchmark, step, "cpu", attention_flops(shape, mode), provider=provider,
           shape=list(shape), dtype="fp32", mode=mode)


# ---------------------------------------------------------------------------- one-shot runner
def _cases(device):
    """{(op, shape, mode): providers} timed together (interleaved) in the one-shot run."""
    if device == "cuda":
        out = {("attention", s, m): ATTN_PROVIDERS for s in GPU_SHAPES for m in MODES}
        out.update({("attention_block", s, m): BLOCK_PROVIDERS for s in BLOCK_SHAPES
                    for m in MODES})
        return out
    return {("attention", s, m): ("sdpa", "einsum") for s in CPU_SHAPES for m in MODES}


def run_all(device, reps, dump=lambda rows: None):
    rows = []
    for (op, shape, mode), provs in _cases(device).items():
        flops = (attention_flops if op == "attention" else block_flops)(shape, mode)
        steps, errors = {}, {}
        for prov in provs:
            try:
                if op == "attention":
                    dt = torch.bfloat16 if device == "cuda" else torch.float32
                    step = attention_case(prov, shape, dt, mode, device)
                else:
                    step = block_case(prov, shape, mode, device)
                step()  # a provider that cannot run this case is left out of the timing
                steps[prov] = step
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                errors[prov] = str(e).splitlines()[0][:120]
        res = H.time_interleaved(steps, device, reps, warmup=3) if steps else {}
        group = [{"op": op, "shape": list(shape), "mode": mode, "provider": p,
                  **(res[p].fields("ms") if p in res else {"error": errors.get(p)}),
                  **({"tflops": flops / res[p].median / 1e12} if p in res else {})}
                 for p in provs]
        for anchor in ("einsum", "sdpa_flash", "eager"):
            if any(r["provider"] == anchor for r in group):
                H.add_ratios(group, anchor, ("op", "shape", "mode"))
        rows += group
        for r in group:
            print(json.dumps({k: v for k, v in r.items() if not k.endswith("_samples")}),
                  flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        dump(rows)
    return rows


ABOUT = """Attention at U-Net shapes: the Triton flash kernel and SDPA's backends against the
einsum form of guided-diffusion / torchcfm (the anchor; on the GPU also against SDPA-flash), and
the attention block (GroupNorm + qkv + attention + projection, each Triton fusion) against the
eager block. TFLOP/s from the FLOP convention in the module docstring (forward 4 B H T^2 D,
forward + backward 3.5x that). On the CPU only the reference path (SDPA) and the einsum form run
(the Triton kernels only run interpreted there, a test mode)."""


def _fill(report, rows, device):
    report.reset()
    anchors = ("sdpa_flash", "einsum", "eager") if device == "cuda" else ("einsum",)
    cols = [("op", "op", "{}"), ("shape", "shape", "{}"), ("mode", "mode", "{}"),
            ("provider", "provider", "{}"), ("ms [IQR]", lambda r: H.spread(r, "ms", 3), "{}"),
            ("TFLOP/s", "tflops", "{:.3f}")]
    cols += [(f"vs {a} [IQR]", lambda r, a=a: H.ratio(r, f"vs_{a}"), "{}") for a in anchors]
    cols.append(("error", "error", "{}"))
    report.table(rows, cols)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_common_args(ap, reps=10)
    ap.add_argument("--out", help="same as --json (kept for older command lines)")
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    device = H.resolve_device(args.device)
    paths = (args.md, args.json or args.out)
    report = H.Report(f"Attention ({device}): flash / SDPA / einsum, and the attention block",
                      device, about=ABOUT, params={"reps": args.reps}, argv=argv)

    def dump(rows):  # after every case: a cut-off run keeps what it measured
        _fill(report, rows, device)
        report.checkpoint(*paths)

    rows = run_all(device, args.reps, dump)
    _fill(report, rows, device)
    report.note(H.RATIO_NOTE)
    report.write(*paths)


if __name__ == "__main__":
    main()
