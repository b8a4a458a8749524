"""Publish a ``make demo`` run into docs/demo/ (what README.md and docs/ show), then update README.

Copies OUT/report.md (image links rewritten), each pair's metrics.csv (+ the teacher subset's
teacher/metrics.csv), grid.png, tradeoff.png and zoom.png (renamed by pair) and the native-size
section's native_rg1.png and the utility section's predictions.png into docs/demo/
and runs scripts/update_readme.py.
Usage: ``python scripts/publish_demo.py runs/demo``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(run: str) -> int:
    src, dst = Path(run), ROOT / "docs" / "demo"
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.iterdir():
        old.unlink()
    report = (src / "report.md").read_text()
    for ev in sorted(p for p in src.glob("eval_*") if (p / "metrics.csv").is_file()):
        pair = ev.name[len("eval_"):]
        shutil.copyfile(ev / "metrics.csv", dst / f"metrics_{pair}.csv")
        if (ev / "teacher" / "metrics.csv").is_file():
            shutil.copyfile(ev / "teacher" / "metrics.csv", dst / f"metrics_teacher_{pair}.csv")
        for fig in ("grid", "tradeoff", "zoom"):
            if (ev / f"{fig}.png").is_file():
                shutil.copyfile(ev / f"{fig}.png", dst / f"{fig}_{pair}.png")
                report = report.replace(f"{ev.name}/{fig}.png", f"{fig}_{pair}.png")
    if (src / "utility" / "predictions.png").is_file():  # the utility section's figure
        shutil.copyfile(src / "utility" / "predictions.png", dst / "utility_predictions.png")
        report = report.replace("utility/predictions.png", "utility_predictions.png")
    if (src / "native_rg1.png").is_file():  # the native-size section's figure
        shutil.copyfile(src / "native_rg1.png", dst / "native_rg1.png")
    (dst / "report.md").write_text(report)
    return subprocess.call([sys.executable, str(ROOT / "scripts" / "update_readme.py")])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
