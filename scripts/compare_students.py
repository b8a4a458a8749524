"""The two distillation routes side by side (the ``students`` table of docs/distill.md).

For each student run: its method, network calls per translation, optimizer steps, the
teacher-cache time (config.json), the training time (from log.csv: every logged interval's
steps x batch / images/s), and its validation against the teacher over training (the MSE
between the EMA student's and the teacher's translations of the same held-out images at
tau_min, the mid point and tau_max, shown as PSNR in dB for images in [-1, 1]).

    python scripts/compare_students.py LABEL=RUN [LABEL=RUN ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from _blocks import fill_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "distill.md"


def summary(label: str, run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    train = cfg["train"]
    rows = list(csv.DictReader((run / "log.csv").open()))
    batch = int(train["batch_size"])
    seconds, prev = 0.0, 0
    for r in rows:
        step, ips = int(r["step"]), float(r["img_per_s"] or "nan")
        if ips > 0:
            seconds += (step - prev) * batch / ips
        prev = step
    vals = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    cache = (cfg.get("teacher_cache") or {}).get("seconds") or 0.0
    return {"label": label, "method": train["method"],
            "calls": 1 if train["method"] == "oneshot" else 2,
            "steps": f"{prev} of {train['steps']}" if prev < int(train["steps"]) else str(prev),
            "cache_s": float(cache), "train_s": seconds,
            "val": [(s, 10 * math.log10(4.0 / v)) for s, v in vals]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN")
    a = ap.parse_args(argv)
    rs = [summary(label, Path(path)) for label, path in (i.split("=", 1) for i in a.runs)]
    lines = [f"Written by `python scripts/compare_students.py {' '.join(a.runs)}`.", "",
             "| student | method | calls / translation | steps done | teacher cache (min) | "
             "training (min) | total (min) | PSNR vs teacher, held-out (dB) by step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rs:
        curve = ", ".join(f"{s}: {p:.1f}" for s, p in r["val"])
        lines.append(f"| {r['label']} | {r['method']} | {r['calls']} | {r['steps']} | "
                     f"{r['cache_s'] / 60:.1f} | {r['train_s'] / 60:.1f} | "
                     f"{(r['cache_s'] + r['train_s']) / 60:.1f} | {curve} |")
    body = "\n".join(lines)
    fill_block(DOC, "students", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
