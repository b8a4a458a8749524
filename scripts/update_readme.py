"""Write README.md's generated blocks: every number in them comes from a file a script wrote.

* ``<!-- demo:begin -->`` .. ``<!-- demo:end -->``: from the demo published in docs/demo/
  (``python scripts/publish_demo.py runs/demo`` copies a ``make demo`` run's report.md,
  metrics.csv, grids and trade-off figures there);
* ``<!-- status:begin -->`` .. ``<!-- status:end -->``: from ``benchmarks/results/*.json``
  (written by the ``benchmarks/bench_*.py`` scripts).

Usage: ``python scripts/update_readme.py`` (rewrites README.md in place; prints what it used).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from _blocks import fill_block

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "docs" / "demo"
RESULTS = ROOT / "benchmarks" / "results"
COLS = (("ssim_src", "SSIM (src)↑", "{:.3f}"), ("psnr_tgt", "PSNR (true tgt)↑", "{:.2f}"),
        ("fid_enl0", "FID-ENL0↓", "{:.1f}"), ("nps_dist", "NPS-dist↓", "{:.2f}"),
        ("noise_ratio", "noise ×tgt", "{:.2f}"), ("sec_per_image", "s/img", "{:.2f}"))
KEEP = ("baseline", "medshift", "student", "classical", "sdedit", "oracle")


def _f(v, fmt):
    try:
        return fmt.format(float(v))
    except (TypeError, ValueError):
        return str(v)


def _short(line: str) -> str:
    """A verdict line of the report without the parts every line repeats."""
    line = re.sub(r", MedShift 1-step τ=[\d.]+, \d+ test images:", ":", line)
    line = re.sub(r", student vs its teacher at τ=[\d.]+ on the teacher's (\d+) images:",
                  r", vs the teacher (\1 images):", line)
    return line.replace(" vs the teacher's ", " vs ")


def _merge_teacher(lines: list[str]) -> list[str]:
    """One line per pair for its student-vs-teacher verdicts (in place of the first)."""
    out, merged = [], {}
    for ln in lines:
        head, sep, rest = ln.partition(", vs the teacher ")
        if not sep:
            out.append(ln)
            continue
        what, _, verdict = rest.partition(": ")
        if head not in merged:
            merged[head] = len(out)
            out.append(f"{head}, vs the teacher {what}: {verdict}")
        else:
            out[merged[head]] += f"; {verdict}"
    return out


def demo_block() -> str:
    from medshift_fast.translate.settings import DEFAULTS

    tau = f"{DEFAULTS['tau']:g}"  # the student's row at the default tau (the report has all)
    report = (DEMO / "report.md").read_text()
    timing = json.loads(re.search(r"## Timing \(s\)\n```json\n(.*?)```", report, re.S).group(1))
    intro = report.split("\n## Verdict", 1)[0].split("\n", 2)[2].strip().split("\n\n")[0]
    lines = report.split("## Verdict\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    exports = [ln for ln in lines if ln.startswith("- ONNX export")]
    # the hallucination counts per row stay in the report (a front door keeps the verdicts)
    verdict = "\n".join(_merge_teacher([_short(ln) for ln in lines
                                         if ln.startswith("- ") and ln not in exports
                                         and "hallucinations per image" not in ln
                                         and "vs its teacher" not in ln]))
    ok = sum("verified in ONNX Runtime" in ln for ln in exports)
    verdict += (f"\n- ONNX exports (translator and student) verified in ONNX Runtime against "
                f"eager PyTorch: {ok} of {len(exports)}")
    out = [intro, "",
           f"`make demo` on this 2-core CPU: **{timing['total_s'] / 60:.1f} minutes** "
           "(after the one-time set-up) "
           f"(simulate {timing['simulate_s']:.0f} s, own training {timing['train_s']:.0f} s, "
           f"evaluation {sum(v for k, v in timing.items() if k.startswith('eval_')):.0f} s, "
           f"export {timing.get('export_s', 0):.0f} s). Verdict against the targets:", "",
           verdict, ""]
    util = report.split("## Does the translation train better models?", 1)
    if len(util) == 2:  # the demo's sim-to-real utility section: its verdict lines
        body = util[1].split("\n## ", 1)[0]
        said = [ln for ln in body.splitlines() if ln.startswith("- ")][:2]  # gap, best
        if said:
            out += ["Does it help? A downstream network trained on the translated synthetic "
                    "views instead of the raw ones, scored on real views of new subjects "
                    "(the demo's budget; the full benchmark: [docs/utility.md](docs/utility.md)):",
                    "", *said, ""]
    for f in sorted(DEMO.glob("metrics_*.csv")):
        teacher = f.stem.startswith("metrics_teacher_")
        if teacher:  # the teacher and SDEdit on the subset: in the full report
            continue
        pair = f.stem[len("metrics_"):].replace("_to_", " → ")
        rows = [r for r in csv.DictReader(open(f)) if r["kind"] in KEEP[:3] + KEEP[-1:]
                and (r["kind"] != "student" or r["tau"] == tau)]  # classical rows: the report
        rows.sort(key=lambda r: (KEEP.index(r["kind"]), r["tau"]))
        n = rows[0].get("n", "") if rows else ""
        title = f"{pair}, {'the teacher and SDEdit, ' if teacher else ''}n = {n}"
        out += [f"| {title} | " + " | ".join(c[1] for c in COLS) + " |",
                "|---|" + "---|" * len(COLS)]
        out += ["| " + r["method"] + " | " + " | ".join(_f(r[k], fmt) for k, _, fmt in COLS)
                + " |" for r in rows]
        out.append("")
    out += ["FID-ENL0 = Fréchet distance on ImageNet EfficientNet-Lite0 features (not Inception "
            "FID: not comparable with the paper's); \"true tgt\" = the pixel-aligned rendering of "
            "the same view in the target domain. The teacher and SDEdit (on 16 of the images), "
            "the bootstrap intervals and the tuning curves: [docs/demo/report.md]"
            "(docs/demo/report.md).", ""]
    grids = sorted(DEMO.glob("grid_*.png"))
    out += [f"![{g.stem}](docs/demo/{g.name})" for g in grids]
    tradeoffs = sorted(DEMO.glob("tradeoff_*.png"))
    out += [f"![{t.stem}](docs/demo/{t.name})" for t in tradeoffs]
    zooms = sorted(DEMO.glob("zoom_*.png"))
    if zooms:
        out += ["", "100 % zoom (source, teacher, student, the same student with the next seed and "
                "with noise 0, TV, BM3D, true target; what they show: "
                "[docs/distill.md](docs/distill.md#what-the-zoom-grids-show)):", ""]
        out += [f"![{z.stem}](docs/demo/{z.name})" for z in zooms]
    return "\n".join(out)


def _load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _range(d, key, **match):
    vals = [r[key] for r in d["rows"] if all(r.get(k) == v for k, v in match.items())
            and isinstance(r.get(key), (int, float)) and r.get(key)]
    if not vals:
        return "–"
    lo, hi = min(vals), max(vals)
    return f"{lo:.2f}×" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}×"


def _native(d) -> str:
    def get(prov, key, shape=None, side=None):
        return next((r.get(key) for r in d["rows"] if r["provider"] == prov
                     and (shape is None or r["shape"] == shape)
                     and (side is None or r["side"] == side) and r.get(key)), None)
    parts = []
    a, b = get("student_tiled", "ms_per_mp", side=512), get("student_tiled", "ms_per_mp",
                                                             side=4096)
    if a and b:
        parts.append(f"student time/MP at 4096² = {b / a:.2f}× at 512²")
    pk = [get("cli_student", "peak_mb", shape=s) for s in ([2048, 2048], [3000, 2500])]
    if all(pk):
        parts.append(f"`translate --size native` 2048² / 3000×2500 peak RSS {pk[0]:.0f} / "
                     f"{pk[1]:.0f} MB")
    w, t = get("student_whole", "peak_mb", side=512), get("student_tiled", "peak_mb", side=512)
    if w and t:
        parts.append(f"512²: tiles {t:.0f} MB vs whole-image {w:.0f} MB")
    return "; ".join(parts) or "–"


def _lean(d) -> str:
    """`translate --size native` with the demo's lean student against the U-Net student."""
    rows = [r for r in d["rows"] if r.get("provider") == "new" and "peak_mb" in r
            and r.get("vs_anchor")]
    if not rows:
        return "–"
    parts = [f"{r['group']}: {r['s']:.1f} s, {r['vs_anchor']:.1f}× the U-Net student, peak "
             f"{r['peak_mb']:.0f} MB" for r in rows]
    return "`translate --size native`, " + "; ".join(parts)


def status_block() -> str:
    rows = ["| area | measured here (2-core CPU; ratios from one run) | results file |",
            "|---|---|---|"]
    specs = (
        ("Sinkhorn (C++)", "sinkhorn_cpu", lambda d: f"{_range(d, 'vs_anchor', provider='cpp')}"
         " POT `sinkhorn_log` (fp32)"),
        ("Fused guided stage (C++)", "guided_stage_cpu",
         lambda d: f"{_range(d, 'vs_reference', provider='cpp')} the eager ops"),
        ("Sampler, compiled", "sampler_cpu",
         lambda d: f"{_range(d, 'vs_anchor', provider='sampler_compiled')} an eager torchdiffeq "
         "loop end to end"),
        ("Training step", "train_cpu",
         lambda d: f"{_range(d, 'vs_anchor', provider='medshift')} torchcfm's SB-CFM step "
         "(same-size U-Net)"),
        ("Export, ONNX Runtime", "export_cpu",
         lambda d: f"{_range(d, 'vs_eager', provider='onnxruntime')} eager per image"),
        ("One-step student", "student_cpu",
         lambda d: f"{_range(d, 'vs_anchor', provider='student')} the eager teacher "
         "(10 + 10 Euler steps, guidance on)"),
        ("Native resolution (tiles)", "native_cpu", _native),
        ("Lean student, end to end", "lean_cpu", _lean),
    )
    for area, name, fn in specs:
        d = _load(name)
        if d is None:
            rows.append(f"| {area} | not measured yet | – |")
            continue
        rows.append(f"| {area} | {fn(d)} | [{name}.md](benchmarks/results/{name}.md) |")
    rows += ["", "Correctness is tested against references (POT, closed forms, SDPA, analytic "
             "ODEs, the teacher for the student, ONNX Runtime vs eager) on every commit. GPU: the "
             "CUDA/Triton paths are unverified in this wave (no GPU was lent); the earlier H100 "
             "checks are in [gpu_h100_checks.md](benchmarks/results/gpu_h100_checks.md), and "
             "`benchmarks/gpu/run_gpu_checks.sh` is the prepared script for the next GPU."]
    return "\n".join(rows)


def main() -> int:
    readme = ROOT / "README.md"
    if (DEMO / "report.md").is_file():
        fill_block(readme, "demo", demo_block(), required=True)
    else:
        print("no docs/demo/report.md: the demo block is left as it is", file=sys.stderr)
    fill_block(readme, "status", status_block(), required=True)
    text = readme.read_text()
    print(f"README.md: {len(text.split())} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
