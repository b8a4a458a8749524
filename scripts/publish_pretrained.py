"""Copy what the demo needs of the pretrained runs into pretrained/ (scripts/pretrain.sh).

pretrained/demo128/ and pretrained/demo128_student/ get config.json, model.safetensors (EMA),
log.csv and data.json (the SHA-256 of the simulated data's simulator.json and manifest.csv, which
the demo compares with the data it simulates); pretrained/README.md gets each run's command,
regenerated from its recorded config (every field that differs from the default), its size and
its last logged validation figure.

    python scripts/publish_pretrained.py [WORK_DIR]    (default runs/pretrain)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from medshift_fast.demo import data_fingerprint
from medshift_fast.fileio import atomic_write_text
from medshift_fast.run import load_run
from medshift_fast.train.config import TrainConfig
from medshift_fast.train.distill import DistillConfig

# fields that only say where things are or how the loop reports: not part of the recipe
_PLACE = {"data", "out", "teacher", "resume", "overwrite", "device"}


def command(name: str, cls, recorded: dict, paths: dict[str, str]) -> str:
    """``medshift NAME`` with the flags of every recorded field that differs from its default."""
    parts = [f"medshift {name}"] + [f"--{k.replace('_', '-')} {v}" for k, v in paths.items()]
    for f in dataclasses.fields(cls):
        if f.name in _PLACE or f.name not in recorded:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        v = recorded[f.name]
        if isinstance(v, list):
            v = tuple(v)
        if v == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, tuple):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    return " \\\n    ".join(parts)


def last_val(log: Path) -> str:
    rows = [r for r in csv.DictReader(log.open()) if r.get("val_loss")]
    if not rows:
        return "no validation"
    return f"step {rows[-1]['step']}: validation loss {float(rows[-1]['val_loss']):.4g}"


def main(work: str) -> None:
    work = Path(work)
    root = Path(__file__).resolve().parents[1] / "pretrained"
    fp = data_fingerprint(work / "data")
    lines = ["# Shipped checkpoints (written by scripts/publish_pretrained.py)", "",
             "The demo evaluates these (same simulated data: `data.json` holds its fingerprint, "
             "which the demo checks). `scripts/pretrain.sh` reruns the commands below from "
             "scratch (about 1.5 hours of one core here, minutes on a GPU); a resumed run "
             "continues "
             "exactly where it stopped.", ""]
    specs = ((work / "teacher", "demo128", "train", TrainConfig,
              {"data": "runs/pretrain/data", "out": "runs/pretrain/teacher"}),
             (work / "student", "demo128_student", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student"}))
    for src, name, cmd, cls, paths in specs:
        run = load_run(src)  # it loads and verifies
        dst = root / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "log.csv"):
            shutil.copyfile(src / f, dst / f)
        atomic_write_text(dst / "data.json", json.dumps(fp, indent=1, sort_keys=True))
        size = sum(p.stat().st_size for p in dst.iterdir()) / 2**20
        recorded = json.loads((src / "config.json").read_text())
        recorded = recorded.get("train") or recorded.get("distill") or run.train
        lines += [f"## `{name}/` ({run.kind}, {run.image_size} px, {size:.1f} MB; "
                  f"{last_val(src / 'log.csv')})", "", "```bash",
                  command(cmd, cls, recorded, paths), "```", ""]
        print(f"{dst}: {size:.1f} MB")
    atomic_write_text(root / "README.md", "\n".join(lines))
    print(f"wrote {root / 'README.md'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pretrain")
