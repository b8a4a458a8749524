"""Sinkhorn benchmarks: the same problems, the same fixed work (100 iterations, tol = 0), fp32.

CPU: ``cpp`` (csrc/cpu/sinkhorn.cpp) vs POT ``ot.sinkhorn(method="sinkhorn_log")`` on NumPy
arrays (fp32 arrays, and fp64 as torchcfm ends up calling it) vs the ``reference`` backend (torch
logsumexp loop), at N = M in {64, 256, 1024}; eps = 0.05 x the mean cost (plus 1e-3 x at 1024,
where more iterations fall back to the log domain). Goals (issue 6) at N = M = 1024:
cpp >= 20x POT sinkhorn_log and >= 3x the reference backend.
GPU (skipped without CUDA): ``cuda`` and ``triton`` vs POT's torch backend on the GPU and the
reference backend, N = M in {256, 1024}, K = 1 and a K = 5 batch in one launch.

    pytest benchmarks/bench_sinkhorn.py                       # pytest-benchmark
    python benchmarks/bench_sinkhorn.py --md benchmarks/results/sinkhorn_cpu.md   # ratio table
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
import warnings

import numpy as np
import pytest
import torch

from medshift_fast import ops

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


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, device, warmup=1, reps=5, clock=time.perf_counter):
    """Best-of-reps time in seconds (min: the least disturbed run on a shared machine).

    ``clock=time.process_time`` counts the CPU time of this process instead of wall time: with
    one thread it is the most stable figure on a machine whose cores other jobs share."""
    for _ in range(warmup):
        step()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = clock()
        step()
        _sync(device)
        best = min(best, clock() - t)
    return best


def machine_info(device):
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import ot

        info["pot"] = ot.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# ----------------------------------------------------------------------------- pytest-benchmark
def _bench(benchmark, step, device, rounds, **info):
    def run():
        step()
        _sync(device)

    benchmark.extra_info.update(machine_info(device), iterations=ITERS, **info)
    benchmark.pedantic(run, warmup_rounds=1, rounds=rounds, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["iters_per_s"] = ITERS / benchmark.stats.stats.median


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
def run_all(device, reps, clock=time.perf_counter):
    rows = []
    cases = CPU_CASES if device == "cpu" else GPU_CASES
    for case in cases:
        K, n, rel = (1, *case) if device == "cpu" else case
        cost, eps = make_cost(K, n, rel, device=device)
        providers = CPU_PROVIDERS if device == "cpu" else GPU_PROVIDERS
        for p in providers:
            if p == "cpp" and not _cpp_available():
                continue
            r = max(1, reps // 2) if p.startswith("pot") and n >= 1024 else reps
            t = time_step(step_fn(p, cost, eps), device, reps=r, clock=clock)
            rows.append({"K": K, "n": n, "rel_eps": rel, "provider": p, "seconds": t})
    return rows


def ratio_table(rows, kernel):
    """Markdown: time per provider and the kernel's speed-up over each of the others."""
    out = ["| K | N = M | eps / mean | provider | ms (best) | kernel speed-up |",
           "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["K"], r["n"], r["rel_eps"]) for r in rows):
        rs = [r for r in rows if (r["K"], r["n"], r["rel_eps"]) == key]
        base = next((r["seconds"] for r in rs if r["provider"] == kernel), None)
        for r in rs:
            sp = "—" if base is None or r["provider"] == kernel else f"{r['seconds'] / base:.1f}x"
            out.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {r['provider']} | "
                       f"{1e3 * r['seconds']:.2f} | {sp} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if HAS_CUDA else "cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--md", default=None, help="write the table to this markdown file")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for every provider (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (use with --threads 1)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = run_all(args.device, args.reps, clock)
    info = machine_info(args.device)
    kernel = "cpp" if args.device == "cpu" else "cuda"
    text = (f"device: {info['device']}, {os.cpu_count()} CPUs, torch {info['torch']} "
            f"({info['threads']} threads), POT {info.get('pot', '-')}; {ITERS} iterations, "
            f"tol = 0, fp32, best of {args.reps} ({args.clock} clock)\n\n"
            + ratio_table(rows, kernel))
    ref_pot = [(r["n"], r["rel_eps"], r["seconds"]) for r in rows if r["provider"] == "reference"]
    pot = {(r["n"], r["rel_eps"]): r["seconds"] for r in rows if r["provider"] == "pot_log_fp32"}
    if pot:
        text += "\n\nreference backend vs POT sinkhorn_log (fp32 arrays): " + ", ".join(
            f"N={n} eps={e:g}*mean: {pot[(n, e)] / t:.1f}x" for n, e, t in ref_pot if (n, e) in pot)
    print(text)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
