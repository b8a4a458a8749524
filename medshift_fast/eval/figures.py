"""Evaluation figures: the image grid, a 100 %-zoom crop grid and the trade-off planes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import MedShiftError
from .pareto import FIGURE_PLANES

_SWEEPS = (("medshift", "o-", "MedShift"), ("sdedit", "s--", "SDEdit"),
           ("student", "^:", "MedShift 1-step"))
# one marker per classical baseline (by its key); others fall back to "X"
_CLASSICAL_MARKERS = {"gaussian": "D", "tv": "P", "bm3d": "*"}


def save_grid(path: Path, images: dict[str, torch.Tensor], columns: list[str], n_rows: int,
              title: str | None = None) -> None:
    """A matplotlib grid: one column per method, ``n_rows`` images, grey levels fixed to [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in images]
    n = min(n_rows, min(images[c].shape[0] for c in cols))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n + 0.4), squeeze=False)
    for j, c in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(images[c][i, 0].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> uint8 grey levels 0..255 (rounded; values outside are clipped)."""
    v = (x.detach().float().cpu().numpy().clip(-1, 1) + 1.0) * 127.5
    return np.rint(v).astype(np.uint8)


def zoom_mosaic(images: dict[str, torch.Tensor], columns: list[str], rows: list[int],
                crop: tuple[int, int, int, int], zoom: int = 3, gap: int = 2) -> np.ndarray:
    """The pixel array of :func:`save_zoom_grid` without the header (uint8, (R·h·z, C·w·z) plus
    white gaps): each crop pixel becomes a zoom × zoom block (nearest neighbour)."""
    y, x, h, w = (int(v) for v in crop)
    if zoom < 1 or h < 1 or w < 1 or y < 0 or x < 0 or gap < 0:
        raise MedShiftError(f"zoom grid needs zoom >= 1 and a crop (y, x, h, w) with y, x >= 0 "
                            f"and h, w >= 1, got zoom {zoom}, crop {crop}")
    missing = [c for c in columns if c not in images]
    if missing or not columns or not rows:
        raise MedShiftError(f"zoom grid: unknown column(s) {missing}; available: "
                            f"{', '.join(images)}" if missing else "zoom grid needs columns, rows")
    hz, wz = h * zoom, w * zoom
    out = np.full((len(rows) * (hz + gap) - gap, len(columns) * (wz + gap) - gap), 255, np.uint8)
    for j, c in enumerate(columns):
        im = images[c]
        if y + h > im.shape[-2] or x + w > im.shape[-1]:
            raise MedShiftError(f"crop {crop} does not fit the {tuple(im.shape[-2:])} images of "
                                f"{c!r}")
        for i, r in enumerate(rows):
            if not 0 <= r < im.shape[0]:
                raise MedShiftError(f"row {r} out of range for {c!r} ({im.shape[0]} images)")
            tile = to_uint8(im[r, 0, y:y + h, x:x + w])
            tile = np.repeat(np.repeat(tile, zoom, 0), zoom, 1)
            out[i * (hz + gap):i * (hz + gap) + hz, j * (wz + gap):j * (wz + gap) + wz] = tile
    return out


def save_zoom_grid(path, images: dict[str, torch.Tensor], columns: list[str], rows: list[int],
                   crop: tuple[int, int, int, int], zoom: int = 3, gap: int = 2,
                   header: bool = True) -> Path:
    """A 100 %-zoom crop grid as a PNG: no resampling but integer nearest-neighbour zoom.

    Args:
        path: output .png.
        images: {column name: (N, 1, H, W) images in [-1, 1]} (e.g. ``EvalResult.images``).
        columns: names to show, left to right (e.g. source, teacher, student, TV, BM3D, target).
        rows: image indices (one grid row each).
        crop: (y, x, h, w) window cut from every image.
        zoom: integer zoom factor (each pixel -> zoom × zoom screen pixels).
        gap: white pixels between tiles.
        header: write the column names above the tiles (Pillow's built-in font).

    Returns:
        The path written.
    """
    from PIL import Image, ImageDraw

    from ..fileio import atomic_write_bytes

    body = zoom_mosaic(images, columns, rows, crop, zoom, gap)
    if header:
        head_h = 14
        canvas = Image.new("L", (body.shape[1], body.shape[0] + head_h), 255)
        canvas.paste(Image.fromarray(body), (0, head_h))
        draw = ImageDraw.Draw(canvas)
        font = _font()
        wz = crop[3] * zoom
        for j, c in enumerate(columns):
            label = c
            while len(label) > 1 and draw.textlength(label, font=font) > wz:
                label = label[:-2] + "…"
            draw.text((j * (wz + gap) + 1, 1), label, fill=0, font=font)
    else:
        canvas = Image.fromarray(body)
    import io

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def _font():
    """DejaVu Sans from matplotlib (it has σ, τ), else Pillow's built-in bitmap font."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True),
                                  10)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and abs(v) < 90


def save_tradeoff(path: Path, rows: list[dict], title: str | None = None) -> None:
    """Three panels: structure vs realism, accuracy vs noise texture, accuracy vs realism; every
    τ-sweep as a line, the classical baselines and the other baselines as single markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURE_PLANES), figsize=(5 * len(FIGURE_PLANES), 4))
    for ax, (xk, xl, _, yk, yl, _) in zip(axes, FIGURE_PLANES):
        for kind, marker, label in _SWEEPS:
            rs = sorted((r for r in rows if r["kind"] == kind and _finite(r[xk])),
                        key=lambda r: r["tau"])
            if not rs:
                continue
            ax.plot([r[xk] for r in rs], [r[yk] for r in rs], marker, label=label)
            for r in rs:
                ax.annotate(f"τ={r['tau']:g}", (r[xk], r[yk]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        for r in rows:
            if not _finite(r.get(xk)):
                continue
            if r["kind"] == "classical":
                ax.plot([r[xk]], [r[yk]], _CLASSICAL_MARKERS.get(r.get("baseline"), "X"),
                        markersize=8, label=r["method"])
            elif r["kind"] in ("baseline", "inversion", "oracle"):
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


def save_noise_curves(path: Path, curve_rows: list[dict], title: str | None = None) -> None:
    """Noise std vs signal, one line per row of ``noise_curve.csv`` (the target domain's
    reference curve thick and black), log scale; the right panel: the ratio to the reference
    with the ±25 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict]] = {}
    for r in curve_rows:
        by.setdefault(r["method"], []).append(r)
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, rs) in enumerate(by.items()):
        rs = [r for r in rs if _finite(r["signal"]) and _finite(r["std"]) and r["std"] > 0]
        if not rs:
            continue
        x = [r["signal"] for r in rs]
        ref = i == 0
        kw = dict(color="k", lw=2.5, zorder=5) if ref else dict(lw=1.2, marker=".")
        ax.plot(x, [r["std"] for r in rs], label=name, **kw)
        if not ref:
            ax_r.plot(x, [r["ratio_to_target"] for r in rs], label=name, lw=1.2, marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("local signal (low-passed intensity, [-1, 1] scale)")
    ax.set_ylabel("noise std (robust, second difference)")
    ax_r.axhspan(0.75, 1.25, color="0.9", zorder=0)
    ax_r.axhline(1.0, color="k", lw=1)
    ax_r.set_yscale("log")
    ax_r.set_xlabel("local signal")
    ax_r.set_ylabel("noise std / target's")
    ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(f"{title}: noise vs signal over the body", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
