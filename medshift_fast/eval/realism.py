"""The realism and trust columns of ``evaluate``, one object for every row: the classifier
two-sample test (:mod:`.c2st`), the noise-vs-signal curve (:mod:`.noise_curve`) and the
hallucination count (:mod:`.hallucination`).

:class:`Judges` is built once per evaluation from the target domain's reference images (the real
set of the C2ST, the signal bins and the reference noise curve); :meth:`Judges.row` scores one
row's images (translations of the evaluated source images, or the true target's images for the
floor row) and keeps the row's noise curve for ``noise_curve.csv`` / ``noise_curve.png``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..translate.hallucination import hallucination_batch
from .c2st import C2STConfig, c2st
from .noise_curve import NoiseCurve, curve_deviation, noise_curve, signal_bins

NOISE_BINS = 8  # signal bins of the noise curve over the body


def _split_groups(groups: list) -> list | None:
    """The groups, or None (every image its own group) when they are fewer than 2: a set of one
    subject can only be split by image."""
    return groups if len(set(map(str, groups))) >= 2 else None


@dataclass
class Judges:
    """Per-row realism metrics against one reference set.

    Attributes:
        reference: (N, 1, H, W) real target-domain images (the C2ST's real set).
        reference_groups: a subject (group) id per reference image.
        c2st_config: C2ST settings, or None to skip the C2ST.
        seed: base seed of the C2ST.
        hallucination: also count hallucinations (needs the source images).
        curves: {row name: NoiseCurve}, filled by :meth:`row` ("target (reference)" first).
        per_image: one dict per (row, image) of the hallucination counts, for
            ``hallucinations.csv``.
        seconds: {metric: wall seconds spent}, summed over rows.
    """

    reference: torch.Tensor
    reference_groups: list
    c2st_config: C2STConfig | None = None
    seed: int = 0
    hallucination: bool = True
    curves: dict[str, NoiseCurve] = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t0 = time.perf_counter()
        self.edges = signal_bins(self.reference, NOISE_BINS)
        self.ref_curve = noise_curve(self.reference, self.edges)
        self.curves = {"target (reference)": self.ref_curve}
        self._add("noise_curve", t0)

    def _add(self, key: str, t0: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def row(self, name: str, images: torch.Tensor, groups: list,
            source: torch.Tensor | None = None, run_c2st: bool = True,
            image_ids: list | None = None) -> dict:
        """The realism columns of one row.

        Args:
            name: the row's method name.
            images: (N, 1, H, W) the row's images.
            groups: a subject (group) id per image (the C2ST keeps a subject on one side).
            source: (N, 1, H, W) the source images they were translated from (hallucinations;
                None: not counted).
            run_c2st: run the C2ST on this row (when the judges have a C2ST config).
            image_ids: a name per image for ``per_image`` (default: its index).

        Returns:
            {c2st_acc, c2st_lo, c2st_hi, c2st_seed_std, c2st_seconds (nan without the C2ST),
             noise_curve_dev, halluc_count, halluc_area, halluc_images (nan without a source)}.
        """
        out: dict = {}
        t0 = time.perf_counter()
        curve = noise_curve(images, self.edges)
        self.curves[name] = curve
        out["noise_curve_dev"] = curve_deviation(curve, self.ref_curve)
        self._add("noise_curve", t0)
        if run_c2st and self.c2st_config is not None and min(len(images),
                                                             len(self.reference)) >= 2:
            t0 = time.perf_counter()
            out.update(c2st(self.reference, images, real_groups=_split_groups(
                self.reference_groups), fake_groups=_split_groups(groups), cfg=self.c2st_config,
                seed=self.seed).row())
            self._add("c2st", t0)
        else:
            out.update(dict.fromkeys(("c2st_acc", "c2st_lo", "c2st_hi", "c2st_seed_std",
                                      "c2st_seconds"), float("nan")))
        if self.hallucination and source is not None:
            t0 = time.perf_counter()
            stats = hallucination_batch(source, images)
            ids = image_ids or list(range(len(stats)))
            self.per_image += [{"method": name, "image": i, "count": st["count"],
                                "area_px": st["area_px"], "max_z": st["max_z"]}
                               for i, st in zip(ids, stats)]
            counts = np.array([s["count"] for s in stats], dtype=np.float64)
            out["halluc_count"] = float(counts.mean())
            out["halluc_area"] = float(np.mean([s["area_px"] for s in stats]))
            out["halluc_images"] = float((counts > 0).mean())
            self._add("hallucination", t0)
        else:
            out.update(dict.fromkeys(("halluc_count", "halluc_area", "halluc_images"),
                                     float("nan")))
        return out

    def curve_rows(self) -> list[dict]:
        """Every kept curve, one dict per (row, bin), for ``noise_curve.csv``."""
        return [r for name, c in self.curves.items() for r in c.rows(name, self.ref_curve)]


# ------------------------------------------------------------------------- issue 29 / 31 checks
C2ST_MAX = 0.75  # issue 29: a classifier tells the translation from real in at most 75 %
NOISE_CURVE_MAX = 0.25  # issue 29: the noise-vs-signal curve within ±25 % of the target's
NOISE_LEVEL = (0.8, 1.25)  # issue 29, the dose pair: the noise level relative to the target's


def _num(row: dict | None, key: str) -> float | None:
    v = None if row is None else row.get(key)
    return float(v) if isinstance(v, float) and math.isfinite(v) else None


def realism_checks(row: dict, identity: dict | None, true: dict | None,
                   curve: bool = True) -> list[tuple[bool, str]]:
    """Issue 29's realism targets for one learned row, each (met, text with its numbers):
    C2ST accuracy <= ``C2ST_MAX``; its interval below identity's (disjoint: "well below");
    with ``curve`` the noise-vs-signal curve within ±``NOISE_CURVE_MAX``, else (the dose pair)
    the noise level within ``NOISE_LEVEL``. Metrics that were not computed give no check."""
    out = []
    acc, i_lo = _num(row, "c2st_acc"), _num(identity, "c2st_lo")
    if acc is not None:
        ref = ", ".join(f"{who} {_num(r, 'c2st_acc'):.2f}" for who, r in
                        (("identity", identity), ("true target", true))
                        if _num(r, "c2st_acc") is not None)
        out.append((acc <= C2ST_MAX, f"C2ST accuracy {acc:.2f} [{row['c2st_lo']:.2f}, "
                                     f"{row['c2st_hi']:.2f}] (≤ {C2ST_MAX:g}; {ref})"))
        if i_lo is not None:
            out.append((row["c2st_hi"] < i_lo, f"C2ST well below identity's: [{row['c2st_lo']:.2f}"
                                               f", {row['c2st_hi']:.2f}] vs [{i_lo:.2f}, "
                                               f"{identity['c2st_hi']:.2f}] (disjoint)"))
    dev = _num(row, "noise_curve_dev")
    if curve and dev is not None:
        floor = _num(true, "noise_curve_dev")
        out.append((dev <= NOISE_CURVE_MAX, f"noise-vs-signal curve within ±{100 * dev:.0f} % of "
                                            f"the target's over the body (±"
                                            f"{100 * NOISE_CURVE_MAX:.0f} %" + (
                                                f"; true target ±{100 * floor:.0f} %)"
                                                if floor is not None else ")")))
    elif not curve and _num(row, "noise_ratio") is not None:
        lo, hi = NOISE_LEVEL
        out.append((lo <= row["noise_ratio"] <= hi, f"noise level ×{row['noise_ratio']:.2f} of "
                                                    f"the target's ({lo:g}–{hi:g})"))
    return out


def hallucination_line(rows: list[dict]) -> str | None:
    """Issue 31's hallucination count per method row, one sentence (no target: the true target
    row is the floor); None when nothing was counted."""
    got = [r for r in rows if _num(r, "halluc_count") is not None]
    if not got:
        return None
    return ("hallucinations per image (new compact structures beyond the source's noise; the "
            "true target row is what a perfect translation is counted): "
            + ", ".join(f"{r['method']} {r['halluc_count']:.2f}" for r in got))
