"""The recipe sweep behind the ``TranslationSettings`` defaults (written to docs/recipe.md).

For a run and the demo's data: the two demo translations (synthetic_low -> real_normal,
real_low -> real_exposure) on held-out (test-split) images, scored by ``medshift evaluate``'s own
metrics, over the translation settings (tau, encode and decode guidance, solver and steps, the
SDE decode), the SDEdit-style baseline's tau-sweep, and other trained runs at the base setting
(training length, crop size, sigma). Writes docs/recipe/sweep.csv, docs/recipe/sweep.md (the
tables), docs/recipe/sweep.png (the figure) and the table section of docs/recipe.md between its
``<!-- sweep:begin -->`` / ``<!-- sweep:end -->`` markers.

    python scripts/recipe_sweep.py --run pretrained/demo128 --data runs/demo/data \\
        --runs A=runs/A,B=runs/B --n 12
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shlex
import sys
import time
from pathlib import Path

import torch
from _blocks import fill_block

from medshift_fast.eval.evaluate import EvalConfig, evaluate
from medshift_fast.fileio import atomic_write_text
from medshift_fast.run import load_run
from medshift_fast.translate import RECIPE, Translator

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "recipe"
PAIRS = (("synthetic_low", "real_normal"), ("real_low", "real_exposure"))
BASE = dict(tau=0.45, guidance_encode=0.0, guidance_decode=2.0, steps=10, solver="euler",
            decode="ode", sde_noise=0.0)


def settings_grid() -> list[tuple[str, dict]]:
    """(group, MedShift settings) of the sweep; every group varies one thing around BASE (the tau
    group is evaluate's own MedShift rows at BASE's other settings)."""
    g = [("encode guidance", {**BASE, "guidance_encode": w}) for w in (1.0, 2.0)]
    g += [("decode guidance", {**BASE, "guidance_decode": w}) for w in (1.0, 3.0)]
    g += [("solver", {**BASE, "solver": "euler", "steps": 5}),
          ("solver", {**BASE, "solver": "heun", "steps": 5})]
    g += [("SDE decode", {**BASE, "decode": "sde", "sde_noise": e}) for e in (0.5, 2.0)]
    # the default tau: its decode guidance (w = 2 there is the tau group's own row)
    g += [("decode guidance at τ=0.6", {**BASE, "tau": 0.6, "guidance_decode": w})
          for w in (1.0, 1.5)]
    return g


def name_of(s: dict) -> str:
    n = (f"MedShift τ={s['tau']:g} w={s['guidance_encode']:g}/{s['guidance_decode']:g} "
         f"{s['solver']}{s['steps']}")
    return n + (f" sde={s['sde_noise']:g}" if s["decode"] == "sde" else "")


def sweep_run(run_dir: str, data: str, n: int, out: Path, label: str, full: bool,
              only: set[str] | None = None) -> list[dict]:
    """Score one run on both pairs; ``full``: the whole settings grid, else the base only;
    ``only``: just these groups of the grid."""
    run = load_run(run_dir)
    rows = []
    for src, tgt in PAIRS:
        extra, seen = [], set()
        grid = [(g, s) for g, s in settings_grid() if only is None or g in only] \
            if (full or only) else []
        for _group, s in grid:
            name = name_of(s)
            if name in seen:
                continue
            seen.add(name)
            tr = Translator(run, src, tgt, batch_size=16, **s)
            extra.append((name, "medshift", s["tau"], tr.translate))
        t0 = time.perf_counter()
        res = evaluate(EvalConfig(checkpoint=str(run_dir), data=data, source=src, target=tgt,
                                  out=str(out / f"{label}_{src}_to_{tgt}"),
                                  taus=(0.3, 0.45, 0.6) if full and not only
                                  else (BASE["tau"],),
                                  baselines=full and not only, inversion=False, max_images=n,
                                  progress=False, batch_size=16, **{k: BASE[k] for k in (
                                      "guidance_encode", "guidance_decode", "steps",
                                      "solver")}),
                       run=run, extra_methods=extra)
        groups = {name_of(s): g for g, s in grid}
        for r in res.rows:
            group = groups.get(r["method"], "tau" if r["kind"] == "medshift" else r["kind"])
            if not full and r["kind"] != "medshift":
                continue
            if only and group not in only:
                continue
            rows.append({"run": label, "pair": f"{src}->{tgt}", "group": group, **r})
        print(f"{label} {src}->{tgt}: {len(res.rows)} rows in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return rows


COLS = (("ssim_src", "SSIM src↑", "{:.3f}"), ("psnr_tgt", "PSNR tgt↑", "{:.2f}"),
        ("fid_enl0", "FID-ENL0↓", "{:.1f}"), ("nps_dist", "NPS↓", "{:.2f}"),
        ("noise_ratio", "noise ×tgt", "{:.2f}"), ("sec_per_image", "s/img", "{:.2f}"))


def tables(rows: list[dict]) -> str:
    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        rs = [r for r in rows if r["pair"] == pair]
        out += [f"### {pair.replace('->', ' → ')}", "",
                "| run | group | method | " + " | ".join(c[1] for c in COLS) + " |",
                "|---|---|---|" + "---|" * len(COLS)]
        for r in rs:
            out.append(f"| {r['run']} | {r['group']} | {r['method']} | "
                       + " | ".join(fmt.format(float(r[k])) for k, _, fmt in COLS) + " |")
        out.append("")
    return "\n".join(out)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4.2 * len(pairs)), squeeze=False)
    for i, pair in enumerate(pairs):
        rs = [r for r in rows if r["pair"] == pair]
        for r in rs:  # the swept run by group; every other run is its own series
            r["series"] = r["group"] if r["run"] == "main" else f"run {r['run']} (base setting)"
        for j, (xk, yk) in enumerate((("ssim_src", "fid_enl0"), ("psnr_tgt", "nps_dist"))):
            ax = axes[i, j]
            # the true target's PSNR against itself is infinite (99): off this plane
            pts = [r for r in rs if not (xk == "psnr_tgt" and float(r[xk]) >= 90)]
            for k, group in enumerate(dict.fromkeys(r["series"] for r in rs)):
                if group not in {r["series"] for r in pts}:
                    continue
                g = [r for r in pts if r["series"] == group]
                ax.plot([float(r[xk]) for r in g], [float(r[yk]) for r in g],
                        "s" if group.startswith("run ") else "o", label=group, alpha=0.8,
                        color=plt.get_cmap("tab20")(k % 20))
                for r in g:
                    ax.annotate(r["method"].replace("MedShift ", "")[:28],
                                (float(r[xk]), float(r[yk])), fontsize=5, xytext=(2, 2),
                                textcoords="offset points")
            ax.set_xlabel(xk)
            ax.set_ylabel(yk)
            ax.set_title(pair, fontsize=8)
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(rows: list[dict], commands: list[str], n: int) -> None:
    """sweep.md, sweep.png and the table section of docs/recipe.md from the sweep's rows."""
    made = "; then ".join(f"`{c}`" for c in commands)
    body = (f"Produced by {made} ({n} test images per pair, held-out subjects; base setting "
            f"{json.dumps(BASE)}; the recipe when written: {json.dumps(RECIPE)}).\n\n"
            + tables(rows))
    atomic_write_text(OUT / "sweep.md", body)
    figure(rows, OUT / "sweep.png")
    fill_block(ROOT / "docs" / "recipe.md", "sweep", body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the run whose settings are swept")
    ap.add_argument("--data", required=True, help="the demo's simulated data")
    ap.add_argument("--runs", default="", help="LABEL=RUN,... other runs at the base setting")
    ap.add_argument("--n", type=int, default=12, help="test images per pair")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true",
                    help="only redraw sweep.md / sweep.png / docs/recipe.md from sweep.csv")
    ap.add_argument("--groups", default="",
                    help="GROUP,... run only these groups of the grid on --run and add their "
                         "rows to the existing sweep.csv (replacing rows of the same name)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    work = ROOT / "runs" / "recipe_sweep"
    if a.replot:
        rows = list(csv.DictReader((OUT / "sweep.csv").open()))
        commands = json.loads((OUT / "commands.json").read_text())
        write_docs(rows, commands, a.n)
        return 0
    only = set(filter(None, a.groups.split(","))) or None
    cmd = "python scripts/recipe_sweep.py " + shlex.join(argv or sys.argv[1:])
    rows = sweep_run(a.run, a.data, a.n, work, "main", full=True, only=only)
    for item in filter(None, a.runs.split(",")):
        label, path = item.split("=", 1)
        rows += sweep_run(path, a.data, a.n, work, label, full=False)
    commands = [cmd]
    if only:  # merge into the last full sweep
        new = {(r["run"], r["pair"], r["method"]) for r in rows}
        old = list(csv.DictReader((OUT / "sweep.csv").open()))
        rows = [r for r in old if (r["run"], r["pair"], r["method"]) not in new] + rows
        cj = OUT / "commands.json"
        first = (json.loads(cj.read_text()) if cj.is_file() else
                 re.findall(r"`([^`]+)`", (OUT / "sweep.md").read_text())[:1])
        commands = first + [cmd]
    atomic_write_text(OUT / "commands.json", json.dumps(commands, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(OUT / "sweep.csv", buf.getvalue())
    write_docs(rows, commands, a.n)
    print(f"wrote {OUT / 'sweep.csv'}, sweep.md, sweep.png ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
