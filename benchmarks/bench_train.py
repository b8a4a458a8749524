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
    *_net     (one-shot runner only) forward + backward of that U-Net alone at the training
              batch shape: no coupling, no optimizer -- how much of a step the network is.
Target (issue 5): >= 2x torchcfm on the CPU, >= 3x on a GPU with bf16 + fused kernels.

    pytest benchmarks/bench_train.py                       # pytest-benchmark (make bench)
    python benchmarks/bench_train.py --threads 1 --clock cpu --md benchmarks/results/train_cpu.md

Derived figures, all computed by this script: images/s = batch / median step time; FLOPs of
one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of the
U-Net and any other matmul/conv in the step; elementwise work is not counted) over one eager
step of each network family (the ``_no_cl`` / ``_bf16`` / ``_compile`` variants run the same
arithmetic); achieved GFLOP/s = FLOPs / median step time (wall) and FLOPs / median process CPU
time (a loaded machine's stolen time excluded); % of peak = the latter against one core's fp32
peak estimated from /proc/cpuinfo (``_harness.cpu_fp32_peak``: clock x SIMD lanes x 2 FMA units
x 2 FLOP). No peak is estimated for a GPU.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _harness as H
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from medshift_fast.models import PRESETS, count_parameters
from medshift_fast.train import TrainConfig, flow_trainer

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# (image size, batch) per preset: small enough for a shared 2-core CPU, realistic on a GPU
SHAPES = {"cpu": {"tiny": (32, 16), "small": (32, 16)},
          "cuda": {"tiny": (64, 128), "small": (64, 128)}}
K = 5  # domains
SIGMA = 0.1


@dataclass
class Case:
    """One provider: ``step()`` runs one timed unit; ``family`` names the network it trains
    (providers of one family do the same arithmetic); ``countable``: FLOPs can be counted by
    running ``step`` under FlopCounterMode (eager)."""

    step: Callable[[], Any]
    params: int
    family: str
    countable: bool = True


def _data(size: int, n: int = 256):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return x, torch.arange(n) % K


def _trainer(preset: str, size: int, batch: int, **kw):
    x, y = _data(size)
    cfg = TrainConfig(out="/tmp/medshift_bench_train", preset=preset, image_size=size,
                      batch_size=batch, steps=10**6, sigma=SIGMA, val_every=0, sample_every=0,
                      device=DEVICE, **kw)
    return flow_trainer(cfg, data=(x, y, tuple(f"d{i}" for i in range(K))))


def make_medshift(preset: str, size: int, batch: int, **kw) -> Case:
    """Our trainer's ``train_step``."""
    tr = _trainer(preset, size, batch, **kw)
    return Case(tr.train_step, count_parameters(tr.model), "medshift",
                countable=not kw.get("compile"))


def _net_step(fwd, x, t, y, params, autocast=None):
    """Forward + backward of a velocity net alone (MSE against a fixed target)."""
    target = torch.randn_like(x)

    def step():
        for p in params:
            p.grad = None
        with autocast or torch.autocast(x.device.type, enabled=False):
            v = fwd(x, t, y)
        F.mse_loss(v.float(), target).backward()

    return step


def _net_inputs(size: int, batch: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, size, size, generator=g).to(DEVICE)
    t = torch.rand(batch, generator=g).to(DEVICE)
    y = torch.randint(0, K + 1, (batch,), generator=g).to(DEVICE)
    return x, t, y


def make_medshift_net(preset: str, size: int, batch: int) -> Case:
    """Forward + backward of our U-Net with the trainer's defaults (layout, precision)."""
    tr = _trainer(preset, size, batch)
    x, t, y = _net_inputs(size, batch)
    if tr.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    params = list(tr.model.parameters())
    return Case(_net_step(tr.fwd, x, t, y, params, tr.autocast()), count_parameters(tr.model),
                "medshift")


def _torchcfm_unet(preset: str, size: int):
    unet = pytest.importorskip("torchcfm.models.unet.unet")
    p = PRESETS[preset]
    return unet.UNetModelWrapper(
        dim=(1, size, size), num_channels=p["model_channels"], num_res_blocks=p["num_res_blocks"],
        channel_mult=p["channel_mult"], class_cond=True, num_classes=K + 1,
        attention_resolutions=",".join(str(size // d) for d in p["attention_ds"]),
        num_head_channels=p["head_channels"], use_scale_shift_norm=True).to(DEVICE)


def make_torchcfm(preset: str, size: int, batch: int) -> Case:
    """torchcfm's SB-CFM step with a same-size U-Net."""
    tcfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    model = _torchcfm_unet(preset, size)
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

    return Case(step, count_parameters(model), "torchcfm")


def make_torchcfm_net(preset: str, size: int, batch: int) -> Case:
    """Forward + backward of torchcfm's U-Net alone (it takes (t, x, y))."""
    model = _torchcfm_unet(preset, size)
    x, t, y = _net_inputs(size, batch)
    return Case(_net_step(lambda x_, t_, y_: model(t_, x_, y_), x, t, y,
                          list(model.parameters())), count_parameters(model), "torchcfm")


MAKERS = {
    "torchcfm": make_torchcfm,
    # the defaults: channels_last, fp32 on the CPU, bf16 autocast on CUDA, fused AdamW
    "medshift": make_medshift,
    "medshift_no_cl": lambda *a: make_medshift(*a, channels_last=False),
    "medshift_bf16": lambda *a: make_medshift(*a, precision="bf16"),
    # torch.compile of forward + backward (the U-Net traces as one graph); minutes to compile
    "medshift_compile": lambda *a: make_medshift(*a, compile=True),
}
NETS = {"torchcfm_net": make_torchcfm_net, "medshift_net": make_medshift_net}


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (FlopCounterMode: matmul / conv / attention, forward and
    backward; elementwise and optimizer work is not counted)."""
    with FlopCounterMode(display=False) as fc:
        step()
    H.sync(DEVICE)
    return int(fc.get_total_flops())


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("provider", list(MAKERS))
def test_train_step(benchmark, provider, preset):
    size, batch = SHAPES[DEVICE][preset]
    case = MAKERS[provider](preset, size, batch)
    for _ in range(2):  # warm-up (allocator, autotuning, POT import)
        case.step()
    benchmark.group = f"train step {preset} {size}px batch {batch} ({DEVICE})"
    H.pedantic(benchmark, case.step, DEVICE, rounds=5, warmup_rounds=0,
               per_second={"images_per_s": batch}, packages=("torchcfm", "pot"),
               provider=provider, preset=preset, image_size=size, batch=batch,
               params=case.params)


# ------------------------------------------------------------------------------------ one-shot
def run_preset(preset, names, steps, rounds, peak, clock="wall"):
    size, batch = SHAPES[DEVICE][preset]
    cases = {}
    for name in names:
        try:
            cases[name] = {**MAKERS, **NETS}[name](preset, size, batch)
        except (ImportError, pytest.skip.Exception) as exc:  # e.g. no torchcfm on a GPU box
            print(f"{name}: skipped ({exc})", flush=True)
    flops = {}  # per (family, kind): counted on the first countable provider's eager step
    for name, c in cases.items():
        c.step(), c.step()  # warm-up (compilation, allocator, POT import)
        key = (c.family, name.endswith("_net"))
        if c.countable and key not in flops:
            flops[key] = count_flops(c.step)
    res = H.time_interleaved({n: c.step for n, c in cases.items()}, DEVICE, rounds, warmup=0,
                             inner=steps, clock=clock)
    rows = []
    for name, t in res.items():
        c, net = cases[name], name.endswith("_net")
        f = flops.get((c.family, net))
        r = {"preset": preset, "provider": name, "kind": "net fwd+bwd" if net else "train step",
             "family": c.family, "image_size": size, "batch": batch, "params": c.params,
             **t.fields("ms"), "images_per_s": batch / t.median,
             "gflop": f / 1e9 if f else None,
             "gflops": f / t.median / 1e9 if f else None}
        if f and r.get("cpu_ms"):  # per CPU-second: time the scheduler gave others excluded
            r["gflops_cpu"] = f / r["cpu_ms"] / 1e6
            if peak.get("gflops"):
                r["pct_peak"] = r["gflops_cpu"] / peak["gflops"]
        rows.append(r)
    anchor = "torchcfm" if "torchcfm" in res else "medshift_no_cl"
    steps_rows = [r for r in rows if r["kind"] == "train step"]
    H.add_ratios(steps_rows, anchor, ("preset",), name="vs_anchor")
    for r in steps_rows:
        r["anchor"] = anchor
    nets = {r["family"]: r for r in rows if r["kind"] == "net fwd+bwd"}
    for r in steps_rows:  # the share of the step that is the network's forward + backward
        n = nets.get(r["family"])
        if n is not None and not r["provider"].endswith(("_bf16", "_compile", "_no_cl")):
            r["net_share"], r["net_share_iqr"] = H.paired_ratio(n, r)
    return rows


def conclusions(rows, peak, clock="wall") -> list[str]:
    """Sentences computed from the rows: what 2x the anchor would take at this CPU's peak."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        rs = {r["provider"]: r for r in rows if r["preset"] == preset}
        ours, cfm = rs.get("medshift"), rs.get("torchcfm")
        if not (ours and cfm and cfm.get("gflop") and peak.get("gflops")):
            continue
        if not (ours.get("gflops_cpu") and cfm.get("gflops_cpu")):
            continue
        need = 2 * ours["gflop"] * 1e3 / cfm["cpu_ms"]  # our FLOPs in half torchcfm's time
        per = "images/s" if clock == "wall" else "images per CPU-second"
        s = (f"{preset}: medshift {ours['images_per_s']:.1f} {per} = "
             f"{H.ratio(ours, 'vs_anchor')} torchcfm; one step is {ours['gflop']:.1f} GFLOP "
             f"(torchcfm's {cfm['gflop']:.1f}), run at {ours['gflops_cpu']:.0f} GFLOP per "
             f"CPU-second = {ours['pct_peak']:.0%} of one core's estimated fp32 peak "
             f"(torchcfm: {cfm['gflops_cpu']:.0f}, {cfm['pct_peak']:.0%}). Twice torchcfm's "
             f"throughput would need our whole step at {need:.0f} GFLOP per CPU-second = "
             f"{need / peak['gflops']:.0%} of that peak")
        if ours.get("net_share"):
            lo, hi = ours.get("net_share_iqr") or (ours["net_share"],) * 2
            s += (f"; the U-Net's forward + backward alone takes {ours['net_share']:.0%} "
                  f"[{lo:.0%}-{hi:.0%}] of our step's time")
        out.append(s + ".")
    return out


ABOUT = """Images/s of one training step at the same U-Net size: our `Trainer.train_step`
(defaults and variants) against torchcfm's SB-CFM step (the anchor). FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` over one eager step of each network family (matmul,
convolution and attention, forward and backward; elementwise and optimizer work is not
counted); `*_net` rows time the U-Net's forward + backward alone at the same batch."""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--providers", default=",".join([*MAKERS, *NETS]),
                    help="comma-separated subset of " + ", ".join([*MAKERS, *NETS]))
    ap.add_argument("--steps", type=int, default=3, help="steps per provider per repetition")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved repetitions (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time steps by wall clock or this process's CPU time (with --threads "
                         "1: the steadiest figure on a shared machine)")
    H.add_output_args(ap)
    args = ap.parse_args(argv)
    H.apply_threads(args.threads)
    names = [n for n in args.providers.split(",") if n]
    peak = H.cpu_fp32_peak(1) if DEVICE == "cpu" else {}  # per core: figures per CPU-second
    report = H.Report(f"Training throughput vs torchcfm SB-CFM ({DEVICE})", DEVICE,
                      packages=("torchcfm", "pot"), about=ABOUT,
                      params={"steps per repetition": args.steps, "repetitions": args.rounds,
                              "clock": args.clock, "domains": K, "sigma": SIGMA},
                      argv=argv)
    if peak:
        report.info["fp32_peak"] = peak
    rows = []
    for preset in args.presets.split(","):
        rows += run_preset(preset, names, args.steps, args.rounds, peak, args.clock)
        _fill(report, rows, peak)
        report.checkpoint(args.md, args.json)
    _fill(report, rows, peak)
    report.write(args.md, args.json)


def _fill(report, rows, peak):
    clock = report.params.get("clock", "wall")
    report.reset()
    report.table(rows, [
        ("preset", "preset", "{}"), ("shape", lambda r: f"{r['image_size']}px x {r['batch']}",
                                     "{}"),
        ("provider", "provider", "{}"), ("what", "kind", "{}"),
        ("params", lambda r: r["params"] / 1e6, "{:.2f} M"),
        (f"ms [IQR] ({clock} clock)", lambda r: H.spread(r, "ms", 0), "{}"),
        ("images/s" if clock == "wall" else "images / CPU-s", "images_per_s", "{:.1f}"),
        ("vs anchor [IQR]", lambda r: H.ratio(r, "vs_anchor"), "{}"),
        ("GFLOP", "gflop", "{:.1f}"),
        *([("GFLOP/s (wall)", "gflops", "{:.0f}")] if clock == "wall" else []),
        ("GFLOP / CPU-s", "gflops_cpu", "{:.0f}"), ("% of core fp32 peak", "pct_peak", "{:.0%}")])
    for s in conclusions(rows, peak, clock):
        report.text(s)
    if peak:
        report.note(f"fp32 peak estimate (one core): {peak['formula']} = "
                    f"{peak['gflops']:.0f} GFLOP/s; it is compared with FLOPs per CPU-second "
                    "of this process (with several threads: per core-second). "
                    "Assumed: 2 FMA units per core (Xeon Gold/Platinum; some Silver/Bronze "
                    "parts have 1, which would double every % figure), the /proc/cpuinfo clock "
                    "(a VM reports its nominal clock; turbo would raise the peak, AVX-512 "
                    "licence drops would lower it).")
    report.note("GFLOP: FlopCounterMode over one eager step of the row's network family; the "
                "_no_cl / _bf16 / _compile variants do the same arithmetic and are credited "
                "with the same count (bf16 rows are still measured against the fp32 peak).")
    report.note("Each sample is the mean of one repetition's steps. " + H.RATIO_NOTE)


if __name__ == "__main__":
    main()
