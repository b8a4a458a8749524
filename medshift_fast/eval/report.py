"""Evaluation outputs: metrics.csv, report.md (a Table-1-style table), grid.png, tradeoff.png."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch

from ..fileio import atomic_write_text

COLUMNS = [
    ("method", "method", "{}"),
    ("ssim_src", "SSIM↑ (src)", "{:.3f}"),
    ("psnr_src", "PSNR↑ (src)", "{:.2f}"),
    ("ssim_tgt", "SSIM↑ (true tgt)", "{:.3f}"),
    ("psnr_tgt", "PSNR↑ (true tgt)", "{:.2f}"),
    ("fid_enl0", "FID-ENL0↓", "{:.3f}"),
    ("kid", "KID↓", "{:.4f}"),
    ("coverage", "Cov↑", "{:.2f}"),
    ("density", "Dens", "{:.2f}"),
    ("mmd", "MMD↓", "{:.4f}"),
    ("nps_dist", "NPS-dist↓", "{:.3f}"),
    ("hist_dist", "Hist-W1↓", "{:.3f}"),
    ("noise_ratio", "noise ×tgt", "{:.2f}"),
    ("sec_per_image", "s/img", "{:.3f}"),
]


def _fmt(v, f):
    try:
        if isinstance(v, float) and v != v:
            return "–"
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k, ""), f) for k, _, f in COLUMNS) + " |" for r in rows]
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


def save_grid(
    path: Path,
    images: dict[str, torch.Tensor],
    columns: list[str],
    n_rows: int,
    title: str | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in images]
    n = min(n_rows, min(images[c].shape[0] for c in cols))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n + 0.4), squeeze=False)
    for j, c in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(
                images[c][i, 0].float().cpu().numpy(),
                cmap="gray",
                vmin=-1,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The two planes of the trade-off figure: (x key, x label, higher x is better, y key, y label,
# higher y is better).
PLANES = (
    ("ssim_src", "SSIM vs source (structure) →", True, "fid_enl0",
     "FID-ENL0 to the target domain (realism) ↓", False),
    ("psnr_tgt", "PSNR vs the true target, dB (accuracy) →", True, "nps_dist",
     "NPS distance to the target domain (noise texture) ↓", False),
)
_SWEEPS = (("medshift", "o-", "MedShift"), ("sdedit", "s--", "SDEdit"),
           ("student", "^:", "MedShift 1-step"))


def _better(a: dict, b: dict, plane) -> bool:
    """a Pareto-dominates b on ``plane``: no worse on both axes, strictly better on one."""
    xk, _, xhi, yk, _, yhi = plane
    dx = (a[xk] - b[xk]) * (1 if xhi else -1)
    dy = (a[yk] - b[yk]) * (1 if yhi else -1)
    return dx >= 0 and dy >= 0 and (dx > 0 or dy > 0)


def dominance(rows: list[dict], a: str = "medshift", b: str = "sdedit") -> list[str]:
    """One plain sentence per plane: does the ``a`` sweep Pareto-dominate the ``b`` sweep?"""
    out = []
    ra = [r for r in rows if r["kind"] == a]
    rb = [r for r in rows if r["kind"] == b]
    if not ra or not rb:
        return out
    for plane in PLANES:
        name = f"{plane[0].replace('_', ' ')} vs {plane[3].replace('_', ' ')}"
        loose = [r for r in rb if not any(_better(m, r, plane) for m in ra)]
        wins = [r for r in ra if not any(_better(s, r, plane) for s in rb)]
        if not loose:
            out.append(f"{name}: MedShift's τ-sweep Pareto-dominates SDEdit's (every SDEdit "
                       "point is beaten on both axes by some MedShift point).")
        else:
            taus = ", ".join(f"τ={r['tau']:g}" for r in loose)
            out.append(f"{name}: MedShift does NOT dominate SDEdit everywhere: SDEdit {taus} "
                       f"is not beaten by any MedShift point; {len(wins)} of {len(ra)} MedShift "
                       "points are not beaten by any SDEdit point.")
    return out


def save_tradeoff(path: Path, rows: list[dict], title: str | None = None) -> None:
    """Two panels: structure vs realism and accuracy vs noise texture, every sweep on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (xk, xl, _, yk, yl, _) in zip(axes, PLANES):
        for kind, marker, label in _SWEEPS:
            rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["tau"])
            if not rs:
                continue
            ax.plot([r[xk] for r in rs], [r[yk] for r in rs], marker, label=label)
            for r in rs:
                ax.annotate(f"τ={r['tau']:g}", (r[xk], r[yk]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        for r in rows:
            if r["kind"] in ("baseline", "inversion", "oracle") and r[xk] < 90:
                ax.plot([r[xk]], [r[yk]], "x", label=r["method"])
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, res) -> None:
    out.mkdir(parents=True, exist_ok=True)
    s = res.settings
    write_csv(out / "metrics.csv", res.rows)
    title = f"{s['source']} → {s['target']}"
    cols = (
        ["source"]
        + [r["method"] for r in res.rows if r["kind"] == "medshift"]
        + [r["method"] for r in res.rows if r["kind"] == "student"]
        + [r["method"] for r in res.rows if r["kind"] in ("sdedit", "inversion")]
        + ["target (true)"]
    )
    save_grid(out / "grid.png", res.images, cols, s.get("grid_rows", 6), title)
    save_tradeoff(out / "tradeoff.png", res.rows, title)
    lines = [
        f"# Evaluation: {title}",
        "",
        f"{s['n_images']} test images ({s['image_size']}×{s['image_size']}), reference set: "
        f"{s['n_reference']} `{s['target']}` images from the `{s['reference_split']}` split. "
        f"Solver {s['solver']}, {s['steps']} steps per leg, guidance "
        f"w_enc = {s['guidance_encode']}, w_dec = {s['guidance_decode']}.",
        "",
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
        "![grid](grid.png)",
        "",
        "![tradeoff](tradeoff.png)",
        "",
        *[f"- {line}" for line in dominance(res.rows)],
        "",
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
