"""Pareto verdicts on the metric planes: which rows beat which, on both axes at once.

A plane is (x key, x label, higher x is better, y key, y label, higher y is better). Row a
Pareto-dominates row b on a plane when it is no worse on both axes and strictly better on one.
"""

from __future__ import annotations

import math

# The two planes of the sweep verdict (``dominance``) and of the first two figure panels.
PLANES = (
    ("ssim_src", "SSIM vs source (structure) →", True, "fid_enl0",
     "FID-ENL0 to the target domain (realism) ↓", False),
    ("psnr_tgt", "PSNR vs the true target, dB (accuracy) →", True, "nps_dist",
     "NPS distance to the target domain (noise texture) ↓", False),
)
# The planes a learned translation must not be dominated on by a baseline (issue 22).
VERDICT_PLANES = (
    PLANES[1],
    ("psnr_tgt", "PSNR vs the true target, dB (accuracy) →", True, "fid_enl0",
     "FID-ENL0 to the target domain (realism) ↓", False),
)
FIGURE_PLANES = PLANES + VERDICT_PLANES[1:]
# kinds of rows that count as "what a user would pick instead"
RIVALS = ("classical", "sdedit")
# kinds of rows whose verdict the report states
CHOSEN = ("student", "medshift")


def plane_name(plane) -> str:
    """"psnr tgt vs nps dist" style short name of a plane."""
    return f"{plane[0].replace('_', ' ')} vs {plane[3].replace('_', ' ')}"


def _ok(r: dict, plane) -> bool:
    return all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
               for k in (plane[0], plane[3]))


def _better(a: dict, b: dict, plane) -> bool:
    """a Pareto-dominates b on ``plane``: no worse on both axes, strictly better on one."""
    xk, _, xhi, yk, _, yhi = plane
    dx = (a[xk] - b[xk]) * (1 if xhi else -1)
    dy = (a[yk] - b[yk]) * (1 if yhi else -1)
    return dx >= 0 and dy >= 0 and (dx > 0 or dy > 0)


def dominated_by(rows: list[dict], row: dict, planes=VERDICT_PLANES,
                 kinds=RIVALS) -> list[tuple[str, str]]:
    """The rival rows that Pareto-dominate ``row``.

    Args:
        rows: the evaluation's rows (dicts with "method", "kind" and the metric keys).
        row: the row judged (e.g. a student row at the default tau).
        planes: metric planes (default: (PSNR vs true target, NPS distance) and (PSNR vs true
            target, FID-ENL0)).
        kinds: kinds of rows that may dominate (default: classical baselines and SDEdit).

    Returns:
        [(plane name, dominating method)], empty when nothing dominates it. Planes where ``row``
        has no finite value (no aligned ground truth) are skipped.
    """
    out = []
    for plane in planes:
        if not _ok(row, plane):
            continue
        for r in rows:
            if r is not row and r.get("kind") in kinds and _ok(r, plane) and _better(r, row, plane):
                out.append((plane_name(plane), r["method"]))
    return out


def verdict_lines(rows: list[dict], chosen=CHOSEN, kinds=RIVALS) -> list[str]:
    """One sentence per chosen row (every student and MedShift row): dominated or not, by what."""
    if not any(r.get("kind") in kinds for r in rows):
        return []
    lines = []
    for row in rows:
        if row.get("kind") not in chosen:
            continue
        planes = [p for p in VERDICT_PLANES if _ok(row, p)]
        if not planes:
            lines.append(f"{row['method']}: no aligned ground truth, the PSNR planes cannot be "
                         "judged.")
            continue
        hits = dominated_by(rows, row, planes, kinds)
        names = " and ".join(f"({plane_name(p)})" for p in planes)
        if not hits:
            lines.append(f"{row['method']}: not Pareto-dominated on {names} by any classical "
                         "baseline or SDEdit point.")
            continue
        by_plane: dict[str, list[str]] = {}
        for plane, m in hits:
            by_plane.setdefault(plane, []).append(m)
        what = "; ".join(f"on ({p}) by {', '.join(ms)}" for p, ms in by_plane.items())
        lines.append(f"{row['method']}: Pareto-DOMINATED {what}.")
    return lines


def dominance(rows: list[dict], a: str = "medshift", b: str = "sdedit") -> list[str]:
    """One plain sentence per plane: does the ``a`` sweep Pareto-dominate the ``b`` sweep?"""
    out = []
    ra = [r for r in rows if r["kind"] == a]
    rb = [r for r in rows if r["kind"] == b]
    if not ra or not rb:
        return out
    for plane in PLANES:
        name = plane_name(plane)
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
