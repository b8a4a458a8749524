"""Sinkhorn benchmarks: the same problems, the same fixed work (100 iterations, tol = 0), fp32.

CPU: ``cpp`` (csrc/cpu/sinkhorn.cpp) vs POT ``ot.sinkhorn(method="sinkhorn_log")`` on NumPy
arrays (fp32 arrays, and fp64 as torchcfm ends up calling it) vs the ``reference`` backend (torch
logsumexp loop), at N = M in {64, 256, 1024}; eps = 0.05 x the mean cost (plus 1e-3 x at 1024,
where more iterations fall back to the log domain). Goals (issue 6) at N = M = 1024:
cpp >= 20x POT sinkhorn_log and >= 3x the reference backend.
GPU (skipped without CUDA): ``cuda`` and ``triton`` vs POT's torch backend on the GPU and the
reference backend, N = M in {256, 1024}, K = 1 and a K = 5 batch in one launch.

    pytest benchmarks/bench_sinkhorn.py                       # pytest-benchmark
    python benchmarks/bench_sinkhorn.py --threads 1 --clock cpu --reps 3 \
        --md benchmarks/results/sinkhorn_cpu.md                # interleaved, ratio table

The anchor of each group is POT ``sinkhorn_log`` on fp32 arrays (CPU; POT's torch backend on the
GPU); the kernel's speed-up over every other provider is listed as well.
"""

from __future__ import annotations

import argparse
import importlib
import warnings

import _harness as H
import numpy as np
import pytest
import torch

from medshift_fast import _backend, ops

HAS_CUDA = torch.cuda.is_available()
ITERS = 100
CPU_SIZES = (64, 256, 1024)
CPU_CASES = [(n, 0.05) for n in CPU_SIZES] + [(1024, 1e-3)]
CPU_PROVIDERS = ("cpp", "reference", "pot_log_fp32", "pot_log_fp64")
GPU_CASES = [(k, n, 0.05) for n in (256, 1024) for k in (1, 5)]
GPU_PROVIDERS = ("cuda", "triton", "reference", "pot_log_torch")


def _cpp_available() -> bool:
    return importlib.import_module("medshift_fast.ops.sinkhorn")._c_has("cpu")


def make_cost(K, n, rel_eps, device="cpu", seed=0, dim=16):
    """(K, n, n) squared distances of two Gaussian clouds (K = 1: (n, n)) and eps."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(K, n, dim, generator=g)
    x1 = torch.randn(K, n, dim, generator=g) + 0.5
    cost = torch.cdist(x0, x1) ** 2
    cost = (cost[0] if K == 1 else cost).contiguous().to(device)
    return cost, rel_eps * float(cost.mean())


def step_fn(provider, cost, eps):
    """A no-argument callable running one solve of ITERS iterations."""
    if provider in ("cpp", "reference", "cuda", "triton"):
        return lambda: ops.sinkhorn(cost, eps, max_iter=ITERS, tol=0.0, backend=provider)
    import ot

    if provider.startswith("pot_log_fp"):
        dt = np.float32 if provider.endswith("32") else np.float64
        C = cost.cpu().numpy().astype(dt)
        n, m = C.shape
        a, b = np.full(n, 1.0 / n, dtype=dt), np.full(m, 1.0 / m, dtype=dt)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=ITERS,
                                   stopThr=0.0)

        return run
    if provider == "pot_log_torch":  # POT's torch backend, one problem after another
        Cs = cost if cost.dim() == 3 else cost.unsqueeze(0)
        n, m = Cs.shape[1:]
        a = torch.full((n,), 1.0 / n, device=cost.device)
        b = torch.full((m,), 1.0 / m, device=cost.device)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", numItermax=ITERS,
                                    stopThr=0.0) for c in Cs]

        return run
    raise ValueError(provider)


# ----------------------------------------------------------------------------- pytest-benchmark
def _bench(benchmark, step, device, rounds, **info):
    H.pedantic(benchmark, step, device, rounds=rounds, per_second={"iters_per_s": ITERS},
               packages=("pot",), iterations_per_solve=ITERS, **info)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
@pytest.mark.parametrize("n,rel", CPU_CASES)
def test_sinkhorn_cpu(benchmark, n, rel, provider):
    if provider == "cpp" and not _cpp_available():
        pytest.skip("extension without the sinkhorn_log op")
    if provider.startswith("pot"):
        pytest.importorskip("ot")
    benchmark.group = f"sinkhorn-cpu {n}x{n} eps={rel}*mean fp32 {ITERS} it"
    cost, eps = make_cost(1, n, rel)
    _bench(benchmark, step_fn(provider, cost, eps), "cpu", 3 if n >= 1024 else 10,
           provider=provider, shape=[n, n], rel_eps=rel)


@pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark: no CUDA device here")
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
@pytest.mark.parametrize("K,n,rel", GPU_CASES)
def test_sinkhorn_gpu(benchmark, K, n, rel, provider):
    if provider.startswith("pot"):
        pytest.importorskip("ot")
    benchmark.group = f"sinkhorn-gpu K={K} {n}x{n} eps={rel}*mean fp32 {ITERS} it"
    cost, eps = make_cost(K, n, rel, device="cuda")
    _bench(benchmark, step_fn(provider, cost, eps), "cuda", 10, provider=provider,
           shape=[K, n, n], rel_eps=rel)


# ------------------------------------------------------------------------------------ one-shot
def _providers(device):
    out = []
    for p in CPU_PROVIDERS if device == "cpu" else GPU_PROVIDERS:
        if (p == "cpp" and not _cpp_available()) or (
                p in ("cuda", "triton") and not _backend.is_available(p)):
            continue
        if p.startswith("pot"):
            try:
                import ot  # noqa: F401
            except ImportError:
                continue
        out.append(p)
    return out


def run_all(device, reps, clock="wall", big_reps=None, dump=lambda rows: None):
    """Rows of every case, its providers interleaved; ``big_reps`` repetitions at N >= 1024."""
    rows = []
    provs = _providers(device)
    cases = [(1, *c) for c in CPU_CASES] if device == "cpu" else GPU_CASES
    anchor = "pot_log_fp32" if device == "cpu" else "pot_log_torch"
    kernel = "cpp" if device == "cpu" else "cuda"
    for K, n, rel in cases:
        cost, eps = make_cost(K, n, rel, device=device)
        r = big_reps if big_reps and n >= 1024 else reps
        res = H.time_interleaved({p: step_fn(p, cost, eps) for p in provs}, device, r,
                                 clock=clock)
        group = [{"K": K, "n": n, "rel_eps": rel, "provider": p, **t.fields("ms"),
                  "iters_per_s": ITERS / t.median} for p, t in res.items()]
        H.add_ratios(group, anchor, ("K", "n", "rel_eps"), name="vs_anchor")
        k = next((x for x in group if x["provider"] == kernel), None)
        for x in group:  # the kernel's speed-up over each provider: its time / the kernel's
            if k is not None and x is not k:
                x["kernel_speedup"], x["kernel_speedup_iqr"] = H.paired_ratio(x, k)
        rows += group
        dump(rows)
    return rows


ABOUT = """Entropic OT (Sinkhorn) solves of the same problems by every provider, the same fixed
work: 100 iterations, tol = 0, fp32 (POT also on fp64 arrays, as torchcfm ends up calling it).
Problems: squared distances of two 16-d Gaussian clouds, uniform marginals, eps = rel x the mean
cost. Anchor: POT `sinkhorn_log` on fp32 arrays (`vs anchor` > 1: faster than POT); the last
column is the C++ / CUDA kernel's speed-up over the provider of that row. Goals (issue 6) at
N = M = 1024: cpp >= 20x POT sinkhorn_log and >= 3x the reference backend."""


def _fill(report, rows, device, kernel):
    report.reset()
    report.table(rows, [
        ("K", "K", "{}"), ("N = M", "n", "{}"), ("eps / mean", "rel_eps", "{:g}"),
        ("provider", "provider", "{}"), ("ms [IQR]", lambda r: H.spread(r, "ms", 2), "{}"),
        ("vs anchor [IQR]", lambda r: H.ratio(r, "vs_anchor", 1), "{}"),
        (f"{kernel} speed-up over it [IQR]", lambda r: H.ratio(r, "kernel_speedup", 1), "{}")])
    goal = [r for r in rows if r["n"] == 1024 and r["K"] == 1
            and r["provider"] in ("pot_log_fp32", "reference") and r.get("kernel_speedup")]
    if goal:
        report.text(f"Issue 6 at N = M = 1024: {kernel} is " + "; ".join(
            f"{r['kernel_speedup']:.1f}x {r['provider']} (eps {r['rel_eps']:g} x mean)"
            for r in goal) + " (targets: 20x POT, 3x reference).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if HAS_CUDA else "cpu")
    H.add_common_args(ap, reps=5, device=False)
    ap.add_argument("--big-reps", type=int, default=None,
                    help="repetitions at N >= 1024 (default: --reps); POT takes seconds there")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (use with --threads 1)")
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    kernel = "cpp" if args.device == "cpu" else "cuda"
    report = H.Report(f"Sinkhorn ({args.device}): {kernel} vs POT sinkhorn_log vs the reference "
                      "backend", args.device, packages=("pot",), about=ABOUT,
                      params={"iterations": ITERS, "tol": 0, "reps": args.reps,
                              "reps at N >= 1024": args.big_reps or args.reps,
                              "clock": args.clock}, argv=argv)

    def dump(rows):  # after every case: a cut-off run keeps what it measured
        _fill(report, rows, args.device, kernel)
        report.checkpoint(args.md, args.json)

    rows = run_all(args.device, args.reps, args.clock, args.big_reps, dump)
    _fill(report, rows, args.device, kernel)
    report.note(H.RATIO_NOTE)
    report.note("`--clock cpu` counts this process's CPU time, which excludes time the "
                "scheduler gave to other jobs: with one thread the steadiest figure on a "
                "shared machine.")
    report.write(args.md, args.json)


if __name__ == "__main__":
    main()
