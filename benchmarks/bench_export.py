"""Export benchmarks: the same translation as eager PyTorch, torch.compile, ONNX Runtime and AOTI.

All providers run the SAME ``translate`` graph (export.graphs.TranslateModule: float I/O, encode
+ decode, guidance as one 2B forward per evaluation, clamp) for the same fixed settings:
    eager         the eager module (default ``auto`` backend: the library's own CPU path), the
                  anchor
    compile       ``torch.compile(module)`` (inductor, default mode) of the eager module; the
                  row records how many graphs dynamo compiled and how many graph breaks it hit
    compile_export  ``torch.compile`` of the ``torch.export``-ed program's module (its row also
                  records graphs and graph breaks)
    onnxruntime   the exported ONNX graph in ONNX Runtime (CPU provider; CUDA provider on GPU)
    aoti          the AOTInductor package (.pt2) through ``torch._inductor.aoti_load_package``
Figures: per-image latency (B = 1) and throughput in images/s (B = 4), median [IQR] and min of
reps, and each provider's speed-up over eager (measured in the same run, interleaved).
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
import tempfile
import time
from pathlib import Path

import _harness as H
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


def _compiled(module, model, settings, device):
    """torch.compile(module), compiled now for both batch sizes (not inside the timings);
    returns (callable, seconds, {graphs, graph_breaks} dynamo reports)."""
    from torch._dynamo.utils import counters

    counters.clear()
    t0 = time.perf_counter()
    fn = torch.compile(module)
    with torch.no_grad():
        for b in BATCHES:
            fn(torch.zeros(b, model.in_channels, settings.size, settings.size, device=device))
    stats = {"graphs": int(counters["stats"]["unique_graphs"]),
             "graph_breaks": int(sum(counters["graph_break"].values()))}
    return fn, time.perf_counter() - t0, stats


def build_provider(name, model, settings, device, workdir: Path, threads: int):
    """(callable(x), build seconds, extra row fields) of one provider; ImportError when its
    runtime is missing."""
    if name == "eager":
        eager = build_module(model, settings).to(device)
        return eager, 0.0, {}
    if name == "compile":
        # Should the eager module graph-break (e.g. at an op dynamo cannot trace), each piece is
        # compiled on its own and re-compiled per shape: a high recompile limit keeps it
        # compiled rather than silently eager. The row records graphs and breaks.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        return _compiled(build_module(model, settings).to(device), model, settings, device)
    if name == "compile_export":  # torch.compile of the torch.export-ed program
        from medshift_fast.export.aoti import export_program

        t0 = time.perf_counter()
        gm = export_program(model, settings, torch.device(device))[0].module()
        fn, _, stats = _compiled(gm, model, settings, device)
        return fn, time.perf_counter() - t0, stats  # export + compile
    if name == "onnxruntime":
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
        return eng, time.perf_counter() - t0, {}
    if name == "aoti":
        path = workdir / "bench.pt2"
        t0 = time.perf_counter()
        export_engine(model, "aoti", path, settings, verify=False)
        return load_engine(path), time.perf_counter() - t0, {}
    raise ValueError(name)


def build_providers(model, settings, device, workdir: Path, threads: int,
                    names=PROVIDERS) -> dict:
    """{name: (callable(x), build seconds, extra)} for the providers available here."""
    out = {}
    for name in names:
        try:
            out[name] = build_provider(name, model, settings, device, workdir, threads)
        except ImportError as exc:
            print(f"{name} skipped: {exc}", flush=True)
    return out


def run_all(preset, size, steps, solver, device, reps, threads, names=PROVIDERS):
    model = make_model(preset, device)
    s = settings_for(size, steps, solver)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        provs = build_providers(model, s, device, Path(tmp), threads, names)
        for b in BATCHES:
            x = torch.rand(b, model.in_channels, size, size, device=device) * 2 - 1
            res = H.time_interleaved({p: (lambda fn=fn, x=x: fn(x)) for p, (fn, _, _) in
                                      provs.items()}, device, reps, no_grad=True)
            group = [{"provider": p, "batch": b, "build_s": provs[p][1], **provs[p][2],
                      **t.fields("ms"), "ms_per_image": t.median * 1e3 / b,
                      "images_per_s": b / t.median} for p, t in res.items()]
            rows += H.add_ratios(group, "eager", ("batch",), name="vs_eager")
    return rows, s


COLUMNS = [("provider", "provider", "{}"), ("B", "batch", "{}"), ("build s", "build_s", "{:.0f}"),
           ("graphs / breaks", lambda r: f"{r['graphs']} / {r['graph_breaks']}"
            if "graphs" in r else None, "{}"),
           ("ms / batch [IQR]", lambda r: H.spread(r, "ms"), "{}"),
           ("min ms", "ms_min", "{:.1f}"), ("ms / image", "ms_per_image", "{:.1f}"),
           ("images/s", "images_per_s", "{:.1f}"),
           ("speed-up vs eager [IQR]", lambda r: H.ratio(r, "vs_eager"), "{}")]


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def providers(tmp_path_factory):
    """A cache of providers built on first use (tiny, 32 px, euler 2 steps/leg), so that a run
    narrowed with -k builds only what it times."""
    device = "cuda" if HAS_CUDA else "cpu"
    return {"device": device, "model": make_model("tiny", device),
            "settings": settings_for(32, 2, "euler"),
            "dir": tmp_path_factory.mktemp("bench_export"), "built": {}}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_export_translate(benchmark, providers, provider, batch):
    c, device = providers, providers["device"]
    with H.num_threads(None if HAS_CUDA else H.bench_threads()):
        if provider not in c["built"]:
            try:
                c["built"][provider] = build_provider(provider, c["model"], c["settings"],
                                                      device, c["dir"], 1)
            except ImportError as exc:
                c["built"][provider] = exc
        if isinstance(c["built"][provider], ImportError):
            pytest.skip(f"{provider} not available: {c['built'][provider]}")
        fn, build_s, extra = c["built"][provider]
        x = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
        benchmark.group = f"export translate tiny 32px euler 2 steps/leg B={batch} ({device})"
        H.pedantic(benchmark, lambda: fn(x), device, rounds=5, no_grad=True,
                   per_second={"images_per_s": batch}, packages=("onnxruntime",),
                   provider=provider, batch=batch, build_s=build_s, **extra)


# ------------------------------------------------------------------------------------ one-shot
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if HAS_CUDA else "cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="steps per leg")
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--providers", default=",".join(PROVIDERS),
                    help="comma-separated subset of " + ", ".join(PROVIDERS))
    H.add_common_args(ap, reps=7, threads=1, device=False)  # threads: torch and ONNX Runtime
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    names = tuple(p for p in args.providers.split(",") if p)
    if "eager" not in names:
        names = ("eager", *names)  # the anchor
    report = H.Report(f"Export ({args.device}): eager vs torch.compile vs ONNX Runtime vs "
                      "AOTInductor", args.device, packages=("onnxruntime", "onnx"),
                      about=ABOUT, params={"graph": "translate", "preset": args.preset,
                                           "size": args.size, "solver": args.solver,
                                           "steps per leg": args.steps, "tau": 0.6,
                                           "w": "2 / 2", "dtype": "fp32", "reps": args.reps},
                      argv=argv)
    rows, s = run_all(args.preset, args.size, args.steps, args.solver, args.device, args.reps,
                      args.threads, names)
    report.params["U-Net calls of 2B"] = s.nfe()
    report.table(rows, COLUMNS)
    report.note("build s: the one-off export/compile wall time (compile: both batch sizes; "
                "compile_export: torch.export + compile). graphs / breaks: what dynamo "
                "reported while compiling (1 graph per batch size and 0 breaks: the whole "
                "translation is one graph).")
    report.note("The anchor is eager at the same batch size. " + H.RATIO_NOTE)
    report.write(args.md, args.json)


ABOUT = """The same `translate` graph (export.graphs.TranslateModule: float I/O, encode + decode,
guidance as one 2B forward per evaluation, clamp) in every provider; speed-ups are against eager
PyTorch (the anchor) measured in the same run, the providers interleaved within each
repetition. B = 1 is per-image latency, B = 4 throughput."""


if __name__ == "__main__":
    main()
