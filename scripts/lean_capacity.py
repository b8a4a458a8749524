"""Can a lean network represent the shipped student's map? A quick capacity check of candidates.

Every candidate of ``benchmarks/bench_student_arch.py`` is regressed (pseudo-Huber, Adam, one
thread) for ``--steps`` steps onto the anchor student's (``--anchor``, the shipped U-Net
student) translations of the TRAINING images at a tau drawn per item from [0.3, 0.6] (computed
once), on random 64-px crops, deterministic (no noise input); then it translates the
VALIDATION images at tau 0.3 / 0.45 / 0.6 and is scored against the anchor's translations of
them: PSNR over the full band and over the low band (Gaussian sigma 2 px: the anatomy and the
contrast, what the anchor term of the adversarial recipe asks for). A candidate that cannot
reach the anchor's low band with this budget is too small or too local.

    python scripts/lean_capacity.py --steps 600 --out runs/lean_capacity.md
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_student_arch import CANDIDATES, lean_student  # noqa: E402

from medshift_fast.models.discriminator import lowpass  # noqa: E402
from medshift_fast.models.student import pseudo_huber  # noqa: E402
from medshift_fast.run import load_run  # noqa: E402
from medshift_fast.train.data import open_split  # noqa: E402


def _data(anchor, data: str, split: str):
    view = types.SimpleNamespace(data=data, image_size=anchor.image_size, domains=anchor.domains,
                                 domain_map=None, skip_bad=False, resize="crop")
    return open_split(view, split).to_tensors()


@torch.no_grad()
def _translate(m, x, tau, s, g, bs=16):
    return torch.cat([m.translate(x[k:k + bs], tau[k:k + bs] if tau.dim() else tau,
                                  s[k:k + bs], g[k:k + bs]) for k in range(0, x.shape[0], bs)])


def _psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default="pretrained/demo128_adv")
    ap.add_argument("--data", default="runs/pretrain/data")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--doc", action="store_true",
                    help="also into docs/distill.md (the lean_capacity block)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    anchor = load_run(args.anchor)
    a = anchor.model
    pairs = a.config.pairs
    x, y = _data(anchor, args.data, "train")
    xv, yv = _data(anchor, args.data, "val")
    g = torch.Generator().manual_seed(0)
    items = {"x": [], "s": [], "g": [], "tau": []}
    for src, tgt in pairs:
        xs = x[y == src]
        items["x"].append(xs)
        items["s"].append(torch.full((len(xs),), src))
        items["g"].append(torch.full((len(xs),), tgt))
        items["tau"].append(0.3 + 0.3 * torch.rand(len(xs), generator=g))
    items = {k: torch.cat(v) for k, v in items.items()}

    @torch.no_grad()
    def anchor_tr(xx, tau, s, t):
        return torch.cat([a.oneshot(xx[k:k + 16], tau[k:k + 16], s[k:k + 16], t[k:k + 16])
                          for k in range(0, xx.shape[0], 16)])

    target = anchor_tr(items["x"], items["tau"], items["s"], items["g"])
    val = []
    for src, tgt in pairs:
        xs = xv[yv == src]
        for tau in (0.3, 0.45, 0.6):
            n = len(xs)
            s, t, tt = torch.full((n,), src), torch.full((n,), tgt), torch.full((n,), tau)
            val.append((xs, s, t, tt, anchor_tr(xs, tt, s, t)))
    rows = []
    for name in args.only or list(CANDIDATES):
        run = lean_student(CANDIDATES[name], anchor)
        m = run.model.train()
        with torch.no_grad():  # back to the identity start of training
            torch.nn.init.zeros_(m.net.out.weight)
            torch.nn.init.zeros_(m.net.out.bias)
        for p in m.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(m.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps,
                                                    pct_start=0.1)
        gen = torch.Generator().manual_seed(1)
        n = items["x"].shape[0]
        for _ in range(args.steps):
            idx = torch.randint(0, n, (args.batch,), generator=gen)
            oy, ox = torch.randint(0, 65, (2,), generator=gen).tolist()
            crop = (slice(None), slice(None), slice(oy, oy + 64), slice(ox, ox + 64))
            xb, tb = items["x"][idx][crop], target[idx][crop]
            pred = m.oneshot(xb, items["tau"][idx], items["s"][idx], items["g"][idx])
            loss = pseudo_huber(pred, tb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        m.eval()
        full, low = [], []
        for xs, s, t, tt, ref in val:
            with torch.no_grad():
                pred = m.oneshot(xs, tt, s, t).clamp(-1, 1)
            full.append(_psnr(pred, ref.clamp(-1, 1)))
            low.append(_psnr(lowpass(pred, 2.0), lowpass(ref.clamp(-1, 1), 2.0)))
        rows.append((name, sum(full) / len(full), sum(low) / len(low)))
        print(f"{name}: PSNR vs anchor {rows[-1][1]:.2f} dB, low band {rows[-1][2]:.2f} dB",
              flush=True)
        _write(args, argv, rows)  # after every candidate: a cut-off run keeps its rows
    return 0


def _write(args, argv, rows) -> None:
    lines = [f"Written by `python scripts/lean_capacity.py {' '.join(argv or sys.argv[1:])}` "
             f"({args.steps} steps, batch {args.batch}, lr {args.lr:g}; validation images, "
             f"both pairs, tau 0.3 / 0.45 / 0.6).", "",
             "| candidate | PSNR vs anchor, full band (dB) | low band sigma 2 (dB) |",
             "|---|---|---|"]
    lines += [f"| {n} | {f:.2f} | {lo:.2f} |" for n, f, lo in rows]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.doc:
        from _blocks import fill_block

        fill_block(Path(__file__).resolve().parents[1] / "docs" / "distill.md", "lean_capacity",
                   "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
