"""Score one-call students on the VALIDATION split (never the test split) at one tau: the loss
ablation of ``medshift distill --method adversarial`` (docs/distill.md).

For each of the demo's two pairs: identity, the teacher's translation (computed once, kept in
``--cache``), every given student run, and the true (pixel-aligned) target, scored as the demo
scores them -- SSIM vs the source, PSNR vs the true target, FID-ENL0 / KID / coverage against the
target domain's training images, NPS distance, noise level relative to the target's -- with
eval's own functions. Writes a JSON of the rows and, with ``--doc``, the markdown table into
docs/distill.md between ``<!-- ablation:begin -->`` and ``<!-- ablation:end -->``.

    python scripts/distill_ablation.py --data runs/pretrain/data --teacher pretrained/demo128 \
        NAME=RUN [NAME=RUN ...] [--tau 0.6] [--json out.json] [--doc]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("synthetic_low", "real_normal"), ("real_low", "real_exposure"))
COLS = (("ssim_src", "SSIM src↑", "{:.3f}"), ("psnr_tgt", "PSNR tgt↑", "{:.2f}"),
        ("fid_enl0", "FID-ENL0↓", "{:.1f}"), ("kid", "KID↓", "{:.4f}"),
        ("coverage", "Cov↑", "{:.2f}"), ("nps_dist", "NPS↓", "{:.2f}"),
        ("noise_ratio", "noise ×tgt", "{:.2f}"))


def _load(data, domain, split):
    from medshift_fast.data import FolderDataset

    ds = FolderDataset(data, size=128, split=split, domains=(domain,))
    return (torch.stack([ds[i][0] for i in range(len(ds))]),
            [ds.samples[i].view_id for i in range(len(ds))])


def _teacher(cache: Path, teacher: str, x: torch.Tensor, src: str, tgt: str, tau: float,
             split: str) -> torch.Tensor:
    from medshift_fast.run import load_run
    from medshift_fast.translator import Translator

    key = f"{src}->{tgt}@{tau:g}:{split}:{x.shape[0]}"
    store = torch.load(cache, weights_only=True) if cache.is_file() else {}
    if key not in store:
        tr = Translator(load_run(teacher), src, tgt, tau=tau, batch_size=8)
        store[key] = torch.cat([tr.translate(x[k:k + 8]) for k in range(0, x.shape[0], 8)])
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(store, cache)
    return store[key].clamp(-1, 1)


def score(data: str, teacher: str, runs: dict[str, str], tau: float, split: str,
          cache: Path) -> dict[str, list[dict]]:
    from medshift_fast import eval as E
    from medshift_fast.run import load_run
    from medshift_fast.translator import Translator

    fx = E.ENL0Features(batch_size=32)
    out = {}
    for src, tgt in PAIRS:
        xs, ks = _load(data, src, split)
        xt, kt = _load(data, tgt, split)
        gt = xt[torch.tensor([kt.index(k) for k in ks])]
        ref, _ = _load(data, tgt, "train")
        f_ref, nps_ref = fx(ref), E.noise_power_spectrum(ref)
        noise_ref = float(E.noise_level(ref, reduction="mean"))
        rows = {"identity": xs, "teacher": _teacher(cache, teacher, xs, src, tgt, tau, split)}
        for name, path in runs.items():
            tr = Translator(load_run(path), src, tgt, tau=tau)
            with torch.no_grad():
                rows[name] = torch.cat([tr.translate(xs[k:k + 8])
                                        for k in range(0, xs.shape[0], 8)]).clamp(-1, 1)
        rows["true target"] = gt
        res = []
        for name, y in rows.items():
            fm = E.feature_metrics(fx(y), f_ref, seed=0,
                                   kid_subset_size=max(2, min(y.shape[0], ref.shape[0]) // 2))
            res.append({"method": name, "ssim_src": float(E.ssim(y, xs)),
                        "psnr_tgt": min(99.0, float(E.psnr(y, gt))), **fm,
                        "nps_dist": float(E.nps_distance(y, nps_ref)),
                        "noise_ratio": float(E.noise_level(y, reduction="mean")) / noise_ref,
                        "n": int(y.shape[0])})
            print(f"{src}->{tgt} {name:24s} " + " ".join(
                f"{c[0]}={c[2].format(res[-1][c[0]])}" for c in COLS), flush=True)
        out[f"{src} → {tgt}"] = res
    return out


def table(result: dict[str, list[dict]]) -> list[str]:
    lines = []
    for pair, rows in result.items():
        lines += [f"| {pair} | " + " | ".join(c[1] for c in COLS) + " |",
                  "|---|" + "---|" * len(COLS)]
        for r in rows:
            lines.append(f"| {r['method']} | " + " | ".join(c[2].format(r[c[0]]) for c in COLS)
                         + " |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    p.add_argument("--data", default="runs/pretrain/data")
    p.add_argument("--teacher", default="pretrained/demo128")
    p.add_argument("--tau", type=float, default=0.6)
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--cache", default="runs/adv/teacher_val.pt")
    p.add_argument("--json", default=None)
    p.add_argument("--doc", action="store_true", help="write the table into docs/distill.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = dict(r.split("=", 1) for r in a.runs)
    res = score(a.data, a.teacher, runs, a.tau, a.split, Path(a.cache))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.doc:
        sys.path.insert(0, str(ROOT / "scripts"))
        from _blocks import fill_block

        cmd = " ".join(["python scripts/distill_ablation.py", *a.runs, f"--tau {a.tau:g}",
                        "--doc"])
        n = next(iter(res.values()))[0]["n"]
        body = [f"Written by `{cmd}` ({n} validation images per pair, held-out subjects; the "
                f"reference set is the target domain's training images; τ = {a.tau:g}).", "",
                *table(res)]
        fill_block(ROOT / "docs" / "distill.md", "ablation", "\n".join(body).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
