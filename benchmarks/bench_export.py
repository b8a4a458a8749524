"""Export benchmarks: the same translation as eager PyTorch, torch.compile, ONNX Runtime and AOTI.

All providers run the SAME ``translate`` graph (export.graphs.TranslateModule: float I/O, encode
+ decode, guidance as one 2B forward per evaluation, clamp) for the same fixed settings:
    eager         the eager module (default ``auto`` backend: the library's own CPU path)
    compile       ``torch.compile(module)`` (inductor, default mode) of the eager module; it
                  graph-breaks at every ``ops.*`` call (the backend is read from a ContextVar,
                  which dynamo cannot trace), so each block is compiled separately
    compile_export  ``torch.compile`` of the ``torch.export``-ed graph (no graph breaks)
    onnxruntime   the exported ONNX graph in ONNX Runtime (CPU provider; CUDA provider on GPU)
    aoti          the AOTInductor package (.pt2) through ``torch._inductor.aoti_load_package``
Figures: per-image latency (B = 1) and throughput in images/s (B = 4), best and median of reps,
and each provider's speed-up over eager (the anchor, measured in the same run, interleaved).
Export/compile times are reported as well (one-off costs).

    python benchmarks/bench_export.py --md benchmarks/results/export_cpu.md   # ratio table
    pytest benchmarks/bench_export.py                                          # pytest-benchmark

On the CPU the default is one intra-op thread for every provider (``--threads``): on a shared,
loaded 2-core machine OpenMP spin-waits make 2-thread timings meaningless. On a GPU (``--device
cuda``) the same providers run on CUDA (ONNX Runtime only when its CUDA provider exists); that
path is unverified on the machine this was written on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pytest
import torch

from medshift_fast.export import ExportSettings, build_module, export_engine, load_engine
from medshift_fast.models import build_model

HAS_CUDA = torch.cuda.is_available()
PROVIDERS = ("eager", "compile", "compile_export", "onnxruntime", "aoti")
BATCHES = (1, 4)


def make_model(preset: str = "tiny", device: str = "cpu") -> torch.nn.Module:
    """The preset U-Net with random (non-zero) output layers: real compute, any weights."""
    torch.manual_seed(0)
    m = build_model(preset, num_classes=3)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval().to(device)


def settings_for(size: int, steps: int, solver: str) -> ExportSettings:
    return ExportSettings(what="translate", size=size, batch=2, source=0, target=2, tau=0.6,
                          steps=steps, solver=solver)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_providers(model, settings, device, workdir: Path, threads: int) -> dict:
    """{name: (callable(x), build seconds)} for the providers available here."""
    out = {}
    eager = build_module(model, settings).to(device)
    out["eager"] = (lambda x: eager(x), 0.0)

    def compiled_provider(module):
        t0 = time.perf_counter()
        fn = torch.compile(module)
        with torch.no_grad():  # compile for both batch sizes now, not inside the timings
            for b in BATCHES:
                fn(torch.zeros(b, model.in_channels, settings.size, settings.size,
                               device=device))
        return (lambda x: fn(x)), time.perf_counter() - t0

    # The eager module graph-breaks at every ops.* call (the backend choice is read from a
    # ContextVar, which dynamo cannot trace), so each U-Net block is compiled on its own and
    # re-compiled per shape: raise the recompile limit so it is compiled rather than left eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    out["compile"] = compiled_provider(build_module(model, settings).to(device))
    # The same graph without graph breaks: torch.compile of the torch.export'ed program.
    from medshift_fast.export.aoti import export_program

    t0 = time.perf_counter()
    gm = export_program(model, settings, torch.device(device))[0].module()
    fn, _ = compiled_provider(gm)
    out["compile_export"] = (fn, time.perf_counter() - t0)  # export + compile

    try:
        import onnxruntime as ort

        path = workdir / "bench.onnx"
        t0 = time.perf_counter()
        export_engine(model, "onnx", path, settings, verify=False)
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + [
            "CPUExecutionProvider"]
        providers = [p for p in providers if p in ort.get_available_providers()]
        if device == "cuda" and "CUDAExecutionProvider" not in providers:
            raise ImportError("onnxruntime has no CUDA provider")
        eng = load_engine(path, providers=providers, threads=threads)
        out["onnxruntime"] = (lambda x: eng(x), time.perf_counter() - t0)
    except ImportError as exc:
        print(f"onnxruntime skipped: {exc}")

    path = workdir / "bench.pt2"
    t0 = time.perf_counter()
    export_engine(model, "aoti", path, settings, verify=False)
    aoti = load_engine(path)
    out["aoti"] = (lambda x: aoti(x), time.perf_counter() - t0)
    return out


def time_call(fn, x, device, reps: int) -> list[float]:
    with torch.no_grad():
        fn(x)  # warm-up
        _sync(device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)
            _sync(device)
            times.append(time.perf_counter() - t)
    return times


def run_all(preset, size, steps, solver, device, reps, threads):
    model = make_model(preset, device)
    s = settings_for(size, steps, solver)
    with tempfile.TemporaryDirectory() as tmp:
        provs = build_providers(model, s, device, Path(tmp), threads)
        inputs = {b: torch.rand(b, model.in_channels, size, size, device=device) * 2 - 1
                  for b in BATCHES}
        times = {(p, b): [] for p in provs for b in BATCHES}
        for _ in range(reps):  # interleaved: load drifts hit every provider alike
            for b in BATCHES:
                for p, (fn, _) in provs.items():
                    times[(p, b)] += time_call(fn, inputs[b], device, 1)
    rows = []
    for (p, b), ts in times.items():
        rows.append({"provider": p, "batch": b, "best": min(ts), "median": statistics.median(ts),
                     "build_s": provs[p][1]})
    return rows, s


def ratio_table(rows) -> str:
    out = ["| provider | B | build s | ms / batch (median) | ms / image (median) | images/s "
           "(median) | speed-up vs eager (median) | (best) |",
           "|---|---|---|---|---|---|---|---|"]
    for b in BATCHES:
        base = {r["provider"]: r for r in rows if r["batch"] == b}.get("eager")
        for r in (r for r in rows if r["batch"] == b):
            sp_med = base["median"] / r["median"] if base else float("nan")
            sp_best = base["best"] / r["best"] if base else float("nan")
            out.append(f"| {r['provider']} | {b} | {r['build_s']:.0f} | {1e3 * r['median']:.1f} | "
                       f"{1e3 * r['median'] / b:.1f} | {b / r['median']:.1f} | {sp_med:.2f}x | "
                       f"{sp_best:.2f}x |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def providers(tmp_path_factory):
    torch.set_num_threads(int(os.environ.get("MEDSHIFT_BENCH_THREADS", "1")))
    device = "cuda" if HAS_CUDA else "cpu"
    model = make_model("tiny", device)
    s = settings_for(32, 2, "euler")
    return build_providers(model, s, device, tmp_path_factory.mktemp("bench_export"), 1), device


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_export_translate(benchmark, providers, provider, batch):
    provs, device = providers
    if provider not in provs:
        pytest.skip(f"{provider} not available")
    fn = provs[provider][0]
    x = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
    benchmark.group = f"export translate tiny 32px euler 2 steps/leg B={batch} ({device})"
    benchmark.extra_info.update(provider=provider, batch=batch, device=device,
                                torch=torch.__version__, build_s=provs[provider][1])

    def run():
        with torch.no_grad():
            fn(x)
        _sync(device)

    benchmark.pedantic(run, warmup_rounds=1, rounds=5, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


# ------------------------------------------------------------------------------------ one-shot
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if HAS_CUDA else "cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="steps per leg")
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (torch, ONNX Runtime); 0 = library defaults")
    ap.add_argument("--md", default=None, help="write the table to this markdown file")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows, s = run_all(args.preset, args.size, args.steps, args.solver, args.device, args.reps,
                      args.threads)
    dev = (torch.cuda.get_device_name() if args.device == "cuda"
           else platform.processor() or platform.machine())
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = (f"device: {dev}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, load average at end {load}\n\n"
            f"graph: translate, preset {args.preset}, {args.size}x{args.size}, {args.solver} "
            f"{args.steps} steps/leg, tau 0.6, w 2/2 ({s.nfe()} U-Net calls of 2B), fp32; "
            f"{args.reps} interleaved reps\n\n" + ratio_table(rows))
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
