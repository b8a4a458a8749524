"""Summarise a results folder into summary.md (``make bench`` runs it after pytest-benchmark).

* pytest-benchmark JSON files (``make bench`` writes ``<host>.json``): benchmarks grouped by their
  ``group``, every entry quoted as a ratio to the group's anchor -- the entry whose provider is the
  first of ``ANCHORS`` present in the group (else the slowest) -- with the machine recorded;
* one-shot reports written by ``_harness.Report`` (a JSON with a ``command``): listed with their
  title, command and markdown file;
* older JSON files with ``machine`` + ``rows`` but no recorded command (written before the
  harness, e.g. on a lent GPU): their rows rendered as a table, as recorded.

    python benchmarks/summarize.py [benchmarks/results]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import _harness as H

# anchor providers, most specific first (POT fp32 arrays for Sinkhorn, torchcfm for training,
# torchdiffeq for the sampler, the einsum form for attention, eager / reference for the rest)
ANCHORS = ("pot_log_fp32", "pot_log_torch", "torchcfm", "torchdiffeq", "einsum", "eager",
           "reference", "voxel_reference")


def _provider(b: dict) -> str:
    return str(b.get("extra_info", {}).get("provider", b["name"]))


def _anchor(bs: list[dict]) -> dict:
    for a in ANCHORS:
        hit = [b for b in bs if _provider(b) == a]
        if hit:
            return hit[0]
    return max(bs, key=lambda b: b["stats"]["median"])


def pytest_benchmark_section(name: str, data: dict) -> list[str]:
    mi = data.get("machine_info", {})
    lines = [f"## {name} (pytest-benchmark)", "",
             f"machine: {mi.get('node', '?')} {mi.get('processor', '')} "
             f"({mi.get('cpu', {}).get('brand_raw', '')}), python {mi.get('python_version', '')}",
             ""]
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"].split("[")[0]].append(b)
    for g, bs in groups.items():
        anchor = _anchor(bs)
        rows = [{"name": b["name"], "ms": b["stats"]["median"] * 1e3,
                 "vs": anchor["stats"]["median"] / b["stats"]["median"]}
                for b in sorted(bs, key=lambda b: b["stats"]["median"])]
        lines += [f"### {g}", "", f"anchor: {_provider(anchor)}", "",
                  H.md_table(rows, [("benchmark", "name", "{}"), ("median (ms)", "ms", "{:.3f}"),
                                    ("speed-up vs anchor", "vs", "{:.2f}x")]), ""]
    return lines


def _cell(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return v


def legacy_section(name: str, data: dict) -> list[str]:
    mi = data.get("machine", {})
    lines = [f"## {name} (rows as recorded; no command recorded in the file)", "",
             "machine: " + ", ".join(f"{k} {v}" for k, v in mi.items()), ""]
    groups = defaultdict(list)
    for r in data["rows"]:
        groups[r.get("group", "rows")].append(r)
    for g, rs in groups.items():
        keys = list(dict.fromkeys(k for r in rs for k in r if not k.endswith("_samples")))
        lines += [f"### {g}", "",
                  H.md_table([{k: _cell(v) for k, v in r.items()} for r in rs],
                             [(k, k, "{}") for k in keys]), ""]
    return lines


def summarize(folder: Path) -> str:
    lines = ["# Benchmark summary", "",
             f"Written by `python benchmarks/summarize.py {folder}` (do not edit by hand).", ""]
    reports = []
    for f in sorted(folder.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if "benchmarks" in data:
            lines += pytest_benchmark_section(f.name, data)
        elif "command" in data:
            reports.append((f, data))
        elif "rows" in data:
            lines += legacy_section(f.name, data)
    if reports:
        lines += ["## One-shot reports", "",
                  H.md_table([{"file": f.with_suffix(".md").name, "title": d.get("title"),
                               "command": f"`{d['command']}`",
                               "device": d.get("machine", {}).get("device_name"),
                               "run": d.get("started_utc")} for f, d in reports],
                             [("file", "file", "{}"), ("title", "title", "{}"),
                              ("device", "device", "{}"), ("run (UTC)", "run", "{}"),
                              ("command", "command", "{}")]), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    out = folder / "summary.md"
    out.write_text(summarize(folder))
    print(f"wrote {out}")
