"""What the 128-px demo's routes cost on this machine (the ``route`` table of docs/recipe.md).

One training step of the tiny U-Net (forward + backward + AdamW, batch 32) on random crops of
16, 32 and 64 px and on whole 128-px images, and one translation's network work at 128 px
(the recipe: w = 0 encode + w = 2 decode, 10 + 10 Euler steps = 30 image-forwards) against the
one-step student's single forward. Timed in interleaved repetitions; ratios are the point.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/route_costs.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _blocks import fill_block

from medshift_fast.fileio import atomic_write_text
from medshift_fast.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipe.md"


def _train_step(model, opt, size: int, batch: int):
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    t, y = torch.rand(batch), torch.randint(0, 5, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, t, y).pow(2).mean().backward()
        opt.step()
    return step


def _forward(model, size: int, n: int):
    x = torch.randn(1, 1, size, size).contiguous(memory_format=torch.channels_last)
    t, y = torch.rand(1), torch.randint(0, 5, (1,))

    @torch.no_grad()
    def fwd():
        for _ in range(n):
            model(x, t, y)
    return fwd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=5).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cases = {f"train step, {s}-px crops" if s < 128 else "train step, whole 128-px images":
             _train_step(model, opt, s, a.batch) for s in (16, 32, 64, 128)}
    cases["translation at 128 px (30 forwards)"] = _forward(model.eval(), 128, 30)
    cases["one-step student at 128 px (1 forward)"] = _forward(model, 128, 1)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(a.reps):
        for k, fn in cases.items():
            model.train(k.startswith("train"))
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    full = med["train step, whole 128-px images"]
    rows = ["| what | s (median) | vs a whole-image step |", "|---|---|---|"]
    for k, v in med.items():
        rows.append(f"| {k} | {v:.3f} | {v / full:.3f} |")
    body = (f"Written by `OMP_NUM_THREADS=1 .venv/bin/python scripts/route_costs.py` "
            f"({torch.get_num_threads()} thread(s), batch {a.batch}, {a.reps} interleaved "
            f"repetitions, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; absolute times "
            "on a shared CPU are noisy: read the ratios).\n\n" + "\n".join(rows))
    out = ROOT / "docs" / "recipe"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "route_costs.md", body + "\n")
    fill_block(DOC, "route", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
