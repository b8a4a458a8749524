"""Summarise pytest-benchmark JSON files in a results folder into summary.md.

Groups benchmarks by their ``group`` and quotes every entry as a ratio to the group's anchor
(the slowest entry whose name mentions reference/pot/torchcfm/eager/einsum/torchdiffeq, else the
slowest), with the machine recorded in the JSON.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ANCHORS = ("pot", "torchcfm", "reference", "eager", "einsum", "torchdiffeq")


def summarize(folder: Path) -> str:
    lines = ["# Benchmark summary", ""]
    for f in sorted(folder.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if "benchmarks" not in data:
            continue
        mi = data.get("machine_info", {})
        lines += [
            f"## {f.name}",
            "",
            f"machine: {mi.get('node', '?')} {mi.get('processor', '')} "
            f"({mi.get('cpu', {}).get('brand_raw', '')}), python {mi.get('python_version', '')}",
            "",
        ]
        groups = defaultdict(list)
        for b in data["benchmarks"]:
            groups[b.get("group") or b["name"].split("[")[0]].append(b)
        for g, bs in groups.items():
            anchors = [b for b in bs if any(a in b["name"].lower() for a in ANCHORS)]
            anchor = max(anchors or bs, key=lambda b: b["stats"]["median"])
            lines += [
                f"### {g}",
                "",
                "| benchmark | median (ms) | speed-up vs anchor |",
                "|---|---|---|",
            ]
            for b in sorted(bs, key=lambda b: b["stats"]["median"]):
                med = b["stats"]["median"]
                lines.append(
                    f"| {b['name']} | {med * 1e3:.3f} | {anchor['stats']['median'] / med:.2f}× |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    out = folder / "summary.md"
    out.write_text(summarize(folder))
    print(f"wrote {out}")
