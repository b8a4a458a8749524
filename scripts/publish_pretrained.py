"""Copy what the demo needs of the pretrained runs into pretrained/ (scripts/pretrain.sh).

pretrained/demo128/ and pretrained/demo128_student/ get config.json, model.safetensors (EMA),
log.csv and data.json (the SHA-256 of the simulated data's simulator.json and manifest.csv, which
the demo compares with the data it simulates).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from medshift_fast.demo import data_fingerprint
from medshift_fast.fileio import atomic_write_text
from medshift_fast.run import load_run


def main(work: str) -> None:
    work = Path(work)
    root = Path(__file__).resolve().parents[1] / "pretrained"
    fp = data_fingerprint(work / "data")
    for src, name in ((work / "teacher", "demo128"), (work / "student", "demo128_student")):
        load_run(src)  # it loads and verifies
        dst = root / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "log.csv"):
            shutil.copyfile(src / f, dst / f)
        atomic_write_text(dst / "data.json", json.dumps(fp, indent=1, sort_keys=True))
        size = sum(p.stat().st_size for p in dst.iterdir()) / 2**20
        print(f"{dst}: {size:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pretrain")
