"""Evaluation outputs: metrics.csv, paired_bootstrap.csv, report.md (a Table-1-style table with
n and KID ± std, the tuned classical baselines, the Pareto verdicts and the bootstrap intervals),
grid.png, tradeoff.png.

The figures live in :mod:`.figures` and the Pareto logic in :mod:`.pareto`; both are re-exported
here (``report.dominance``, ``report.dominated_by``, ``report.save_zoom_grid``, ...).
"""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from .figures import (  # noqa: F401
    save_grid,
    save_noise_curves,
    save_tradeoff,
    save_zoom_grid,
    zoom_mosaic,
)
from .pareto import (  # noqa: F401
    PLANES,
    VERDICT_PLANES,
    dominance,
    dominated_by,
    plane_name,
    verdict_lines,
)
from .stats import METRICS

# FID-ENL0/KID are refused below MIN_N_FID images (see evaluate.MIN_N_FID); below
# RELIABLE_N_FID the report warns that FID is biased and noisy.
RELIABLE_N_FID = 50


def _kid(r: dict) -> str:
    k, s = r.get("kid"), r.get("kid_std")
    if not isinstance(k, float) or not math.isfinite(k):
        return "–"
    return f"{k:.4f} ± {s:.4f}" if isinstance(s, float) and math.isfinite(s) else f"{k:.4f}"


def _c2st(r: dict) -> str:
    a, lo, hi = r.get("c2st_acc"), r.get("c2st_lo"), r.get("c2st_hi")
    if not isinstance(a, float) or not math.isfinite(a):
        return "–"
    return f"{a:.2f} [{lo:.2f}, {hi:.2f}]"


COLUMNS = [
    ("method", "method", "{}"),
    ("ssim_src", "SSIM↑ (src)", "{:.3f}"),
    ("psnr_src", "PSNR↑ (src)", "{:.2f}"),
    ("ssim_tgt", "SSIM↑ (true tgt)", "{:.3f}"),
    ("psnr_tgt", "PSNR↑ (true tgt)", "{:.2f}"),
    ("fid_enl0", "FID-ENL0↓", "{:.3f}"),
    ("kid", "KID↓ ± std", _kid),
    ("coverage", "Cov↑", "{:.2f}"),
    ("density", "Dens", "{:.2f}"),
    ("mmd", "MMD↓", "{:.4f}"),
    ("nps_dist", "NPS-dist↓", "{:.3f}"),
    ("hist_dist", "Hist-W1↓", "{:.3f}"),
    ("noise_ratio", "noise ×tgt", "{:.2f}"),
    ("noise_curve_dev", "noise(s) max\\|Δ\\|↓", "{:.2f}"),
    ("c2st_acc", "C2ST↓ [95% CI]", _c2st),
    ("halluc_count", "halluc./img↓", "{:.2f}"),
    ("halluc_area", "halluc. px/img", "{:.1f}"),
    ("sec_per_image", "s/img", "{:.3f}"),
]
_DISTRIBUTION = ("fid_enl0", "kid", "coverage", "density", "mmd")


METRIC_NOTE = (
    "noise(s) max|Δ|: the largest |ratio − 1| of the row's noise std to the target domain's, "
    "over signal bins of the body's range (noise as a function of signal; `noise_curve.csv`). "
    "C2ST: held-out accuracy of small CNNs trained to tell the row's images from real "
    "target-domain images on random native-scale crops (0.5 = indistinguishable, 1.0 = "
    "trivially told apart; mean over seeds, bootstrap interval over seeds and held-out images). "
    "halluc./img, px/img: new compact structures the output has and its source does not, beyond "
    "the noise (count and area per image; the identity is 0 by construction, the true target "
    "row is the floor of a perfect translation). docs/evaluation.md defines each.")


def _fmt(v, f, row=None):
    if callable(f):
        return f(row)
    try:
        if isinstance(v, float) and v != v:
            return "–"
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict]) -> str:
    """The metrics table; distribution columns carry n (images per row) in their header."""
    ns = sorted({r["n"] for r in rows if isinstance(r.get("n"), int)})
    tag = f" (n={'/'.join(map(str, ns))})" if ns else ""
    head = "| " + " | ".join(c[1] + (tag if c[0] in _DISTRIBUTION else "") for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k, ""), f, r) for k, _, f in COLUMNS) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])


def write_csv(path: Path, rows: list[dict]) -> None:
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def versions() -> dict:
    import numpy

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        from .. import __version__

        v["medshift_fast"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return v


def small_n_lines(n: int, n_reference: int) -> list[str]:
    """The sample-size caveats printed above the table."""
    lines = [f"n = {n} translated images per row (the same source images for every row); "
             f"reference set n = {n_reference}. KID is the mean ± std over random subsets."]
    if min(n, n_reference) < RELIABLE_N_FID:
        lines.append(f"**Warning:** FID-ENL0 on {min(n, n_reference)} images is biased and "
                     f"noisy (reliable from about {RELIABLE_N_FID}); compare with KID ± std and "
                     "the bootstrap intervals below before concluding anything.")
    return lines


def classical_lines(tuned: list[dict]) -> list[str]:
    """One line per tuned classical baseline: value, objective, curve."""
    out = []
    for t in tuned:
        better = "max" if t["objective"] == "psnr_tgt" else "min"
        curve = ", ".join(f"{v:g}: {s:.3f}" for v, s in t["curve"])
        edge = " (at the grid's edge: the optimum may lie outside the grid)" \
            if t["at_grid_edge"] else ""
        out.append(f"{t['method']}: {t['param']} = {t['value']:g}{edge}, chosen by {better} "
                   f"{t['objective']} against {t['against']} on {t['n_images']} `{t['split']}` "
                   f"images in {t['tune_seconds']:.1f} s; curve {{{curve}}}.")
    return out


def _cell(b: dict | None) -> str:
    if b is None:
        return "–"
    mark = {"method better": " ▲", "baseline better": " ▼"}.get(b["verdict"], "")
    p = 4 if b["metric"] == "kid" else 2 if b["metric"] != "ssim_src" else 3
    return f"{b['diff']:+.{p}f} [{b['lo']:+.{p}f}, {b['hi']:+.{p}f}]{mark}"


def bootstrap_table(boot: list[dict], methods: list[str] | None = None) -> str:
    """Markdown table: one row per (method, baseline), one column per metric."""
    pairs = list(dict.fromkeys((b["method"], b["baseline"]) for b in boot
                               if methods is None or b["method"] in methods))
    if not pairs:
        return ""
    by = {(b["method"], b["baseline"], b["metric"]): b for b in boot}
    keys = [m for m in METRICS if any(b["metric"] == m[0] for b in boot)]
    head = "| method | − baseline | " + " | ".join(f"Δ {m[1]} {'↑' if m[2] else '↓'}"
                                                 for m in keys) + " |"
    sep = "|---|---|" + "|".join("---" for _ in keys) + "|"
    body = [f"| {a} | {b} | " + " | ".join(_cell(by.get((a, b, m[0]))) for m in keys) + " |"
            for a, b in pairs]
    return "\n".join([head, sep, *body])


def _bootstrap_section(res) -> list[str]:
    boot = getattr(res, "bootstrap", None) or []
    if not boot:
        return []
    s = res.settings
    tau = s.get("default_tau")
    chosen = [r["method"] for r in res.rows if r["kind"] in ("student", "medshift")
              and (tau is None or r["tau"] == "" or abs(float(r["tau"]) - tau) < 1e-9)]
    shown = chosen if any(b["method"] in chosen for b in boot) else None
    scope = (f"the rows at the default τ = {tau:g}; every τ is in `paired_bootstrap.csv`"
             if shown is not None and len(shown) < len({b['method'] for b in boot})
             else "every learned row; also in `paired_bootstrap.csv`")
    return [
        "## Paired bootstrap: method − baseline",
        "",
        f"Difference of the metric (method minus baseline) with its {boot[0]['level']:.0%} "
        f"percentile interval over {boot[0]['resamples']} paired resamples of the "
        f"{boot[0]['n']} test images (seed {s.get('seed', 0)}; set metrics recomputed on each "
        f"resample against the fixed reference set), for {scope}. ▲: the interval excludes 0 "
        "in the method's favour; ▼: in the baseline's; no mark: not resolved at this n.",
        "",
        bootstrap_table(boot, shown),
        "",
    ]


def write_all(out: Path, res) -> None:
    """Write every output of an :class:`~medshift_fast.eval.evaluate.EvalResult` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    s = res.settings
    write_csv(out / "metrics.csv", res.rows)
    boot = getattr(res, "bootstrap", None) or []
    if boot:
        write_csv(out / "paired_bootstrap.csv", boot)
    curves = getattr(res, "noise_curves", None) or []
    if curves:
        write_csv(out / "noise_curve.csv", curves)
    if getattr(res, "hallucinations", None):
        write_csv(out / "hallucinations.csv", res.hallucinations)
    title = f"{s['source']} → {s['target']}"
    cols = (
        ["source"]
        + [r["method"] for r in res.rows if r["kind"] == "medshift"]
        + [r["method"] for r in res.rows if r["kind"] == "student"]
        + [r["method"] for r in res.rows if r["kind"] == "classical"]
        + [r["method"] for r in res.rows if r["kind"] in ("sdedit", "inversion")]
        + ["target (true)"]
    )
    save_grid(out / "grid.png", res.images, cols, s.get("grid_rows", 6), title)
    save_tradeoff(out / "tradeoff.png", res.rows, title)
    if curves:
        save_noise_curves(out / "noise_curve.png", curves, title)
    tuned = s.get("classical_tuning") or []
    verdicts = verdict_lines(res.rows)
    lines = [
        f"# Evaluation: {title}",
        "",
        f"{s['n_images']} test images ({s['image_size']}×{s['image_size']}), reference set: "
        f"{s['n_reference']} `{s['target']}` images from the `{s['reference_split']}` split. "
        f"Solver {s['solver']}, {s['steps']} steps per leg, guidance "
        f"w_enc = {s['guidance_encode']}, w_dec = {s['guidance_decode']}.",
        "",
        *[f"{line}\n" for line in small_n_lines(s["n_images"], s["n_reference"])],
        markdown_table(res.rows),
        "",
        "SSIM/PSNR (src): structure kept from the source image. SSIM/PSNR (true tgt): accuracy "
        "against the pixel-aligned true target view (available because the simulator renders "
        "every view in every domain). FID-ENL0/KID/Cov/Dens/MMD: distribution match to the "
        "target domain on ImageNet EfficientNet-Lite0 features (FID-ENL0 is *not* the Inception "
        "FID; numbers are not comparable with the paper's). NPS-dist: log-distance of radially "
        "averaged noise power spectra; Hist-W1: Wasserstein-1 of intensity histograms; "
        "noise ×tgt: high-pass noise level relative to the target domain's (1.0 = matched).",
        "",
        METRIC_NOTE,
        "",
        "![grid](grid.png)",
        "",
        "![tradeoff](tradeoff.png)",
        "",
        *(["![noise curve](noise_curve.png)", ""] if curves else []),
        *[f"- {line}" for line in dominance(res.rows)],
        "",
    ]
    if tuned:
        lines += ["## Classical baselines (tuned on the validation split, never the test split)",
                  "", *[f"- {line}" for line in classical_lines(tuned)], ""]
    if verdicts:
        lines += ["## Pareto verdicts against the classical baselines and SDEdit", "",
                  *[f"- {line}" for line in verdicts], ""]
    lines += _bootstrap_section(res)
    lines += [
        "## Settings",
        "```json",
        json.dumps(s, indent=2, default=str),
        "```",
        "## Versions",
        "```json",
        json.dumps(versions(), indent=2),
        "```",
        "## Timing (s)",
        "```json",
        json.dumps({k: round(v, 2) for k, v in res.timing.items()}, indent=2),
        "```",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
