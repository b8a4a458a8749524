"""Training throughput (images/s): our training step vs torchcfm's SB-CFM step, same-size U-Net.

Providers, per model preset (tiny, small):
    medshift  ``Trainer.train_step`` with the defaults: global log-domain Sinkhorn coupling + SB
              path + class-conditional U-Net (channels_last; fused attention block where
              available) + fused AdamW + clip + EMA; bf16 autocast on CUDA, fp32 on the CPU.
              ``_no_cl`` = contiguous NCHW, ``_bf16`` = bf16 autocast (also on the CPU),
              ``_compile`` = torch.compile (TrainConfig.compile: forward and backward through
              Inductor).
    torchcfm  (anchor) ``SchrodingerBridgeConditionalFlowMatcher.guided_sample_location_and_
              conditional_flow`` (POT Sinkhorn on the CPU) + torchcfm's ``UNetModelWrapper`` with
              the same widths / blocks / attention resolution / head size / scale-shift norm
              + AdamW + clip + EMA, fp32 (torchcfm's own training scripts). Install torchcfm with
              ``pip install --no-deps torchcfm`` (its dependencies pull torchvision and a CUDA
              torch).
Target (issue 5): >= 2x torchcfm on the CPU, >= 3x on a GPU with bf16 + fused kernels.

    pytest benchmarks/bench_train.py                       # pytest-benchmark (make bench)
    python benchmarks/bench_train.py --md out.md           # one-shot, interleaved, ratio table

Derived figure: images/s = batch / median step time. Parameter counts of both U-Nets are recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import pytest
import torch

from medshift_fast.models import PRESETS, count_parameters
from medshift_fast.train import TrainConfig, flow_trainer

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# (image size, batch) per preset: small enough for a shared 2-core CPU, realistic on a GPU
SHAPES = {"cpu": {"tiny": (32, 16), "small": (32, 16)},
          "cuda": {"tiny": (64, 128), "small": (64, 128)}}
K = 5  # domains
SIGMA = 0.1


def _data(size: int, n: int = 256):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return x, torch.arange(n) % K


def make_medshift(preset: str, size: int, batch: int, **kw):
    """(step callable, parameter count) of our trainer."""
    x, y = _data(size)
    cfg = TrainConfig(out="/tmp/medshift_bench_train", preset=preset, image_size=size,
                      batch_size=batch, steps=10**6, sigma=SIGMA, val_every=0, sample_every=0,
                      device=DEVICE, **kw)
    tr = flow_trainer(cfg, data=(x, y, tuple(f"d{i}" for i in range(K))))
    return tr.train_step, count_parameters(tr.model)


def make_torchcfm(preset: str, size: int, batch: int):
    """(step callable, parameter count) of torchcfm's SB-CFM step with a same-size U-Net."""
    tcfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    unet = pytest.importorskip("torchcfm.models.unet.unet")
    p = PRESETS[preset]
    model = unet.UNetModelWrapper(
        dim=(1, size, size), num_channels=p["model_channels"], num_res_blocks=p["num_res_blocks"],
        channel_mult=p["channel_mult"], class_cond=True, num_classes=K + 1,
        attention_resolutions=",".join(str(size // d) for d in p["attention_ds"]),
        num_head_channels=p["head_channels"], use_scale_shift_norm=True).to(DEVICE)
    ema = [q.detach().clone() for q in model.parameters()]
    fm = tcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=SIGMA, ot_method="sinkhorn")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = _data(size)
    x, y = x.to(DEVICE), y.to(DEVICE)

    def step():
        idx = torch.randint(0, x.shape[0], (batch,), device=DEVICE)
        x1, y1 = x[idx], y[idx]
        x0 = torch.randn_like(x1)
        with warnings.catch_warnings():  # its exp(-C/eps) plan underflows -> uniform plan warning
            warnings.simplefilter("ignore")
            t, xt, ut, _, y1 = fm.guided_sample_location_and_conditional_flow(x0, x1, y1=y1)
        loss = torch.mean((model(t, xt, y1) - ut) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, q in zip(ema, model.parameters()):
                e.lerp_(q, 1e-3)
        return loss.item()

    return step, count_parameters(model)


MAKERS = {
    "torchcfm": make_torchcfm,
    # the defaults: channels_last, fp32 on the CPU, bf16 autocast on CUDA, fused AdamW
    "medshift": make_medshift,
    "medshift_no_cl": lambda *a: make_medshift(*a, channels_last=False),
    "medshift_bf16": lambda *a: make_medshift(*a, precision="bf16"),
    # torch.compile of forward + backward (the U-Net traces as one graph); minutes to compile
    "medshift_compile": lambda *a: make_medshift(*a, compile=True),
}


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("provider", list(MAKERS))
def test_train_step(benchmark, provider, preset):
    size, batch = SHAPES[DEVICE][preset]
    step, n_params = MAKERS[provider](preset, size, batch)
    for _ in range(2):  # warm-up (allocator, autotuning, POT import)
        step()
    benchmark.group = f"train step {preset} {size}px batch {batch} ({DEVICE})"
    benchmark.extra_info.update(device=DEVICE, preset=preset, image_size=size, batch=batch,
                                params=n_params, torch=torch.__version__)

    def run():
        step()
        _sync()

    benchmark.pedantic(run, rounds=5, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per provider and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--md", default=None, help="write a markdown table here")
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_name = torch.cuda.get_device_name() if HAS_CUDA else _cpu_name()
    rows, raw = [], []
    for preset in args.presets.split(","):
        size, batch = SHAPES[DEVICE][preset]
        steps = {}
        for name, make in MAKERS.items():
            try:
                steps[name] = make(preset, size, batch)
            except (ImportError, pytest.skip.Exception) as exc:  # e.g. no torchcfm on a GPU box
                print(f"{name}: skipped ({exc})", flush=True)
        anchor = "torchcfm" if "torchcfm" in steps else "medshift_no_cl"
        for fn, _ in steps.values():
            fn(), fn()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, (fn, _) in steps.items():
                _sync()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                _sync()
                times[name].append((time.perf_counter() - t0) / args.steps)
        ips = {n: batch / statistics.median(ts) for n, ts in times.items()}
        for name in steps:
            r = {"preset": preset, "provider": name, "image_size": size, "batch": batch,
                 "params": steps[name][1], "images_per_s": ips[name],
                 "anchor": anchor, "ratio_vs_anchor": ips[name] / ips[anchor]}
            raw.append(r)
            rows.append(f"| {preset} | {size}px × {batch} | {name} | {r['params'] / 1e6:.2f} M | "
                        f"{ips[name]:.1f} | {r['ratio_vs_anchor']:.2f}× {anchor} |")
            print(rows[-1], flush=True)
    md = "\n".join([
        f"# Training throughput vs torchcfm SB-CFM ({DEVICE}: {dev_name}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU thread(s))", "",
        "| preset | shape | provider | params | images/s | ratio vs anchor |",
        "|---|---|---|---|---|---|", *rows, ""])
    if args.md:
        open(args.md, "w").write(md)
    if args.json:
        open(args.json, "w").write(json.dumps({"device": dev_name, "rows": raw}, indent=2))
    print(md)


if __name__ == "__main__":
    main()
