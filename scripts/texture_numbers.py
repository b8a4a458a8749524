"""Is the detector noise model (models/texture.py) right, and what does the C2ST need beyond it?

On the demo's simulated data (its simulator config, ``DATA/simulator.json``), for each real
target domain of the shipped pairs (real_normal, real_exposure):

* the model fitted to the domain's TRAINING images (what ``medshift distill --texture
  detector`` records): correlation sigma, amplitude range;
* scored against those training images by the C2ST (``eval.c2st``, its defaults) and the
  noise-vs-signal curve (``eval.noise_curve``, max |ratio − 1| over the body), on the
  validation subjects' views, re-rendered by the simulator: the real (noisy) views (the floor),
  the simulator's noise-free expectation (a perfect denoiser's output), that expectation plus
  the model's noise (a perfect noise-free translation under this model), and the expectation
  blurred by a Gaussian of 0.5 / 0.7 / 1.0 px before the model's noise (a noise-free image a
  little less sharp than the truth).

The expectation is available only because the data are simulated; nothing here is used in
training. Writes the ``texture-model`` block of docs/distill.md with ``--doc``.

    python scripts/texture_numbers.py [--data runs/pretrain/data] [--doc]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("real_normal", "real_exposure")
BLURS = (0.5, 0.7, 1.0)


def _train_images(data: str, domain: str):
    from medshift_fast.data import FolderDataset

    ds = FolderDataset(data, split="train", domains=(domain,))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, [s.subject or s.view_id or str(s.path) for s in ds.samples]


def score(data: str) -> list[dict]:
    from medshift_fast.data.simulator import SimConfig, render_subject, subject_splits
    from medshift_fast.eval.c2st import c2st
    from medshift_fast.eval.noise_curve import curve_deviation, noise_curve, signal_bins
    from medshift_fast.models.texture import DetectorNoise, _blur

    cfg = SimConfig.from_dict(json.loads((Path(data) / "simulator.json").read_text())["config"])
    val = [i for i, s in enumerate(subject_splits(cfg)) if s == "val"]
    rows = []
    for dom in DOMAINS:
        ref, g_ref = _train_images(data, dom)
        model = DetectorNoise.fit(ref)
        edges = signal_bins(ref)
        c_ref = noise_curve(ref, edges)
        noisy, clean, groups = [], [], []
        for i in val:
            noisy.append(render_subject(cfg, i)[dom])
            clean.append(render_subject(cfg, i, noise=False)[dom])
            groups += [f"s{i:03d}"] * noisy[-1].shape[0]
        noisy = torch.cat(noisy).unsqueeze(1).float()
        clean = torch.cat(clean).unsqueeze(1).float()
        gen = torch.Generator().manual_seed(0)
        n = torch.randn(clean.shape, generator=gen)
        sets = {"real views (noisy)": noisy, "noise-free expectation": clean,
                "noise-free + model noise": (clean + model.noise(clean, n)).clamp(-1, 1)}
        for b in BLURS:
            cb = _blur(clean.double(), b).float()
            sets[f"blurred {b:g} px + model noise"] = (cb + model.noise(cb, n)).clamp(-1, 1)
        for name, y in sets.items():
            r = c2st(ref, y, real_groups=g_ref, fake_groups=groups)
            dev = curve_deviation(noise_curve(y, edges), c_ref)
            rows.append({"domain": dom, "set": name, "c2st": r.accuracy, "lo": r.lo,
                         "hi": r.hi, "curve_dev": dev, "n": int(y.shape[0]),
                         "model": model.describe()})
            print(f"{dom:14s} {name:30s} C2ST {r.accuracy:.2f} [{r.lo:.2f}, {r.hi:.2f}] "
                  f"curve dev {dev:.2f}", flush=True)
    return rows


def block(rows: list[dict], data: str) -> str:
    lines = [f"Written by `python scripts/texture_numbers.py --doc` (data `{data}`; each model "
             "fitted to the domain's training images; scored on the validation subjects' "
             f"{rows[0]['n']} views against those training images).", ""]
    for dom in DOMAINS:
        lines.append(f"- {dom}: {next(r['model'] for r in rows if r['domain'] == dom)}")
    lines += ["", "| target | images | C2ST↓ [95 % CI] | curve dev↓ |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['set']} | {r['c2st']:.2f} [{r['lo']:.2f}, "
                     f"{r['hi']:.2f}] | {r['curve_dev']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/pretrain/data")
    p.add_argument("--doc", action="store_true", help="write the block into docs/distill.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = score(a.data)
    if a.doc:
        sys.path.insert(0, str(ROOT / "scripts"))
        from _blocks import fill_block

        fill_block(ROOT / "docs" / "distill.md", "texture-model", block(rows, a.data),
                   required=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
