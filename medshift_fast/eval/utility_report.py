"""The utility benchmark's numbers and report: intervals, gap closed, verdicts, the figure.

Per condition, with s[k, i] the score of training seed k on test view i:

* the score: mean over seeds and views; its 95 % interval: percentile bootstrap over the test
  views (``stats.bootstrap_indices``, one index matrix shared by every condition, so the
  conditions are paired) of the seed-averaged per-view scores;
* the seed spread: the standard deviation (ddof 1) over seeds of the per-seed mean scores;
* gap closed = (c - synthetic) / (oracle - synthetic) on every resample (its interval), 0 for
  the synthetic condition and 1 for the oracle;
* the verdicts: whether synthetic-only loses to the oracle by more than ``GAP_SPREADS`` times
  the larger seed spread of the two (the benchmark's own validity check), which condition is
  best without real labels and by how much (a paired bootstrap interval of its difference to
  the runner-up), and the translation against the classical routes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

GAP_SPREADS = 3.0
MARKER = "utility.json"  # the output's first write, rewritten with the results last
LEVEL = 0.95


@dataclass
class UtilityResult:
    """Rows (``utility_report.summarize``), per-seed scores and the settings."""

    rows: list[dict] = field(default_factory=list)
    per_seed: dict[str, list[list[float]]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)
    out: Path | None = None


def summarize(per_seed: dict[str, list[list[float]]], task: str, resamples: int,
              seed: int = 0) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Rows (one per condition, in order) and the bootstrap means {name: (B,)}."""
    from .stats import bootstrap_indices, percentile_interval

    names = list(per_seed)
    n = len(next(iter(per_seed.values()))[0])
    idx = bootstrap_indices(n, max(1, resamples), seed)
    per_view = {k: np.asarray(v, dtype=np.float64).mean(0) for k, v in per_seed.items()}
    boot = {k: per_view[k][idx].mean(1) for k in names}
    syn = next((k for k in names if k.startswith("synthetic")), None)
    orc = next((k for k in names if k.startswith("real")), None)
    rows = []
    for k in names:
        seeds = np.asarray(per_seed[k], dtype=np.float64).mean(1)
        lo, hi = percentile_interval(boot[k], LEVEL) if resamples else (np.nan, np.nan)
        row = {"condition": k, "metric": "MAE" if task == "regression" else "Dice",
               "score": float(per_view[k].mean()), "ci_lo": lo, "ci_hi": hi,
               "seed_std": float(seeds.std(ddof=1)) if len(seeds) > 1 else float("nan"),
               "seeds": [round(float(v), 5) for v in seeds], "n_test": n,
               "gap_closed": float("nan"), "gap_lo": float("nan"), "gap_hi": float("nan")}
        if syn and orc:
            den = per_view[orc].mean() - per_view[syn].mean()
            row["gap_closed"] = float((per_view[k].mean() - per_view[syn].mean()) / den) \
                if den else float("nan")
            if resamples and k not in (syn, orc):
                d = boot[orc] - boot[syn]
                g = np.where(d != 0, (boot[k] - boot[syn]) / np.where(d != 0, d, 1), np.nan)
                row["gap_lo"], row["gap_hi"] = percentile_interval(g[np.isfinite(g)], LEVEL)
        rows.append(row)
    return rows, boot


def verdict_lines(rows: list[dict], boot: dict[str, np.ndarray], task: str,
                  unit: str) -> list[str]:
    """The benchmark's verdicts (module docstring), honest whichever way they go."""
    from .stats import percentile_interval

    lower = task == "regression"
    sp = " " if unit else ""
    by = {r["condition"]: r for r in rows}
    syn = next((r for r in rows if r["condition"].startswith("synthetic")), None)
    orc = next((r for r in rows if r["condition"].startswith("real")), None)
    out = []
    if syn and orc:
        gap = abs(syn["score"] - orc["score"])
        spread = max(syn["seed_std"], orc["seed_std"])
        ratio = gap / spread if spread > 0 else float("inf")
        worse = (syn["score"] > orc["score"]) if lower else (syn["score"] < orc["score"])
        ok = worse and ratio > GAP_SPREADS
        out.append(f"The gap is {'real' if ok else 'NOT established'}: synthetic-only "
                   f"{syn['score']:.3f} vs oracle {orc['score']:.3f}{sp}{unit} "
                   f"({'worse' if worse else 'not worse'} by {gap:.3f} = {ratio:.1f}x the "
                   f"larger seed spread {spread:.3f}; needs > {GAP_SPREADS:g}x).")
    cands = [r for r in rows if not r["condition"].startswith(("real", "synthetic"))]
    if not cands:
        return out
    key = (lambda r: r["score"]) if lower else (lambda r: -r["score"])
    ranked = sorted(cands + ([syn] if syn else []), key=key)
    best = ranked[0]
    gc = (f", closing {_pct(best['gap_closed'])} % of the gap (95 % CI "
          f"{_pct(best['gap_lo'])} to {_pct(best['gap_hi'])} %)"
          if np.isfinite(best.get("gap_lo", np.nan)) else "")
    line = f"Best without real labels: {best['condition']} ({best['score']:.3f}{sp}{unit}{gc})"
    if len(ranked) > 1:
        second = ranked[1]
        d = boot[second["condition"]] - boot[best["condition"]]
        lo, hi = percentile_interval(d if lower else -d, LEVEL)
        line += (f"; ahead of {second['condition']} ({second['score']:.3f}) by "
                 f"{abs(best['score'] - second['score']):.3f}{sp}{unit} (paired 95 % CI "
                 f"{lo:.3f} to {hi:.3f}{', not significant' if lo <= 0 <= hi else ''})")
    out.append(line + ".")
    trans = [r for r in cands if r["condition"].startswith("translated")
             and "randomisation" not in r["condition"]]
    rivals = [by[k] for k in ("hist-match + noise + blur", "domain randomisation") if k in by]
    for t in trans:
        for r in rivals:
            d = boot[t["condition"]] - boot[r["condition"]]
            lo, hi = percentile_interval(d, LEVEL)
            better = (hi < 0) if lower else (lo > 0)
            worse = (lo > 0) if lower else (hi < 0)
            word = "beats" if better else "loses to" if worse else "ties with"
            out.append(f"{t['condition']} {word} {r['condition']}: {t['score']:.3f} vs "
                       f"{r['score']:.3f}{sp}{unit} (paired 95 % CI of the difference {lo:+.3f} "
                       f"to {hi:+.3f}).")
    return out


def save_predictions(path: Path, image: torch.Tensor, truth: torch.Tensor,
                     preds: dict[str, torch.Tensor], task: str, unit: str, title: str) -> None:
    """One test view: the image, its label, each condition's prediction and absolute error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write_bytes

    cols = 2 + len(preds)
    fig, ax = plt.subplots(2, cols, figsize=(1.7 * cols, 4.1), squeeze=False)
    t = truth[0].numpy()
    vmax = float(max(np.percentile(t, 99.5), 1e-6)) if task == "regression" else 1.0
    ax[0, 0].imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
    ax[0, 0].set_title("real test view", fontsize=7)
    ax[0, 1].imshow(t, cmap="magma", vmin=0, vmax=vmax)
    ax[0, 1].set_title(f"truth ({unit})", fontsize=7)
    for j, (name, p) in enumerate(preds.items(), start=2):
        pv = p[0].numpy()
        err = np.abs(pv - t)
        ax[0, j].imshow(pv, cmap="magma", vmin=0, vmax=vmax)
        ax[0, j].set_title(name, fontsize=6)
        ax[1, j].imshow(err, cmap="viridis", vmin=0, vmax=vmax / 4 if task == "regression"
                        else 1)
        s = err.mean() if task == "regression" else \
            2 * (pv * t).sum() / max(pv.sum() + t.sum(), 1e-12)
        ax[1, j].set_xlabel(f"|error|, {'MAE' if task == 'regression' else 'Dice'} {s:.2f}",
                            fontsize=6)
    ax[1, 0].text(0.05, 0.5, f"errors: 0 to {vmax / 4:.0f} {unit}" if task == "regression"
                  else "errors: 0 / 1", fontsize=7)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
        a.set_frame_on(a.has_data())
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pct(v: float) -> int:
    """A fraction as a whole percentage (no "-0")."""
    return int(round(100 * float(v))) + 0


def markdown_table(rows: list[dict], unit: str) -> str:
    """The results table (score ± interval, seed spread, gap closed ± interval, and the PSNR of
    the training images against the real renderings of the same views where known)."""
    m = rows[0]["metric"] if rows else "MAE"
    head = (f"| condition | {m}{f' ({unit})' if unit else ''} | 95 % CI | seed spread (std) | "
            "gap closed | 95 % CI | PSNR vs real (dB) |\n|---|---:|---|---:|---:|---|---:|")
    lines = [head]
    for r in rows:
        ci = f"{r['ci_lo']:.3f} – {r['ci_hi']:.3f}" if np.isfinite(r["ci_lo"]) else ""
        g = f"{_pct(r['gap_closed'])} %" if np.isfinite(r["gap_closed"]) else ""
        gci = (f"{_pct(r['gap_lo'])} – {_pct(r['gap_hi'])} %" if np.isfinite(r["gap_lo"])
               else "")
        p = r.get("psnr_vs_real", float("nan"))
        lines.append(f"| {r['condition']} | {r['score']:.3f} | {ci} | {r['seed_std']:.3f} | "
                     f"{g} | {gci} | {f'{p:.2f}' if np.isfinite(p) else ''} |")
    return "\n".join(lines)


def _csv(path: Path, rows: list[dict]) -> None:
    from ..fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def unit_of(cfg) -> str:
    """The score's unit: mm for the simulator's line-integral maps, else the label's own."""
    if cfg.task != "regression":
        return ""
    return "mm" if cfg.label.endswith("_mm") else "label units"


def section_lines(res, cfg, figure: str) -> list[str]:
    """The result as markdown (what was trained and tested, the table, the verdicts, the
    figure): report.md's body and the demo's section."""
    s, b, unit = res.settings, res.settings["budget"], unit_of(cfg)
    words = (f"MAE in {unit} over all pixels, lower is better" if cfg.task == "regression"
             else "Dice, higher is better")
    return [
        f"A compact U-Net (widths {', '.join(map(str, b['widths']))}) learns `{cfg.label}` "
        f"({cfg.task}) from {s['n_train']} labelled `{cfg.source}` `{cfg.train_split}` views "
        f"under each condition, {cfg.seeds} training seeds each, {b['steps']} steps of "
        f"{b['batch_size']} crops of {b['crop'] or 'whole'} px of the views binned "
        f"{cfg.pool}×{cfg.pool}; it is scored on {s['n_test']} `{cfg.target}` "
        f"`{cfg.test_split}` views of subjects never trained on ({words})."
        + (f" Translations by the run `{Path(s['run']).name}`." if s.get("translation") else "")
        + (f" The classical route fitted on `{cfg.tune_split}`." if s.get("classical") else ""),
        "",
        markdown_table(res.rows, unit),
        "",
        "95 % CI: bootstrap over the test views of the seed-averaged scores; seed spread: std "
        "of the per-seed scores; gap closed = (condition − synthetic) / (oracle − synthetic), "
        "with its bootstrap interval; PSNR vs real: the training images against the real "
        "renderings of the same views (the simulator's pixel-aligned ground truth; none for "
        "the randomised conditions, whose images change every step).",
        "",
        *[f"- {v}" for v in res.verdicts],
        "",
        f"![predictions]({figure})",
    ]


def write_report(out: Path, per_seed, test, shown, fig, settings: dict, timing: dict, cfg):
    """Write report.md, metrics.csv, per_seed.csv, predictions.png and utility.json."""
    from ..fileio import atomic_write_text
    from .report import json_sections

    unit = unit_of(cfg)
    rows, boot = summarize(per_seed, cfg.task, cfg.bootstrap, cfg.seed)
    for r in rows:
        r["psnr_vs_real"] = settings.get("psnr_vs_real_db", {}).get(r["condition"],
                                                                    float("nan"))
    verdicts = verdict_lines(rows, boot, cfg.task, unit)
    _csv(out / "metrics.csv", [{k: v for k, v in r.items() if k != "seeds"} for r in rows])
    _csv(out / "per_seed.csv", [{"condition": r["condition"], "seed": k, "score": v}
                                for r in rows for k, v in enumerate(r["seeds"])])
    title = (f"{cfg.source} -> {cfg.target}: {cfg.label} {cfg.task}, one real test view "
             f"({test.view_ids[0] or Path(test.paths[0]).name}), training seed 0")
    save_predictions(out / "predictions.png", shown[0], shown[1], fig, cfg.task,
                     unit or "label", title)
    res = UtilityResult(rows, per_seed, settings, timing, verdicts, out)
    lines = [f"# Sim-to-real utility: {cfg.source} → {cfg.target}", "",
             *section_lines(res, cfg, "predictions.png"), ""]
    lines += json_sections(settings, timing)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / MARKER, json.dumps(
        {"rows": rows, "verdicts": verdicts, "settings": settings, "timing": timing},
        indent=1, default=str) + "\n")
    return res
