"""The demo's issue-29 / issue-31 verdicts from the realism columns (no demo run needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from medshift_fast.demo.eval import PairEval
from medshift_fast.demo.realism import realism_verdicts

NAN = float("nan")


def _row(method, kind, tau, acc, lo, hi, dev, halluc, noise=1.0):
    return {"method": method, "kind": kind, "tau": tau, "c2st_acc": acc, "c2st_lo": lo,
            "c2st_hi": hi, "noise_curve_dev": dev, "halluc_count": halluc, "noise_ratio": noise}


def _pair(src, tgt, student, teacher_rows=None):
    rows = [_row("identity", "baseline", "", 1.0, 1.0, 1.0, 6.1, 0.0), student,
            _row("true target", "oracle", "", 0.53, 0.47, 0.61, 0.02, 0.02)]
    res = SimpleNamespace(rows=rows, settings={"n_images": 48})
    teacher = SimpleNamespace(rows=teacher_rows, settings={"n_images": 16}) \
        if teacher_rows else None
    return PairEval(src, tgt, Path("."), res, teacher)


def test_met_and_not_met_with_numbers():
    good = _row("MedShift 1-step τ=0.6", "student", 0.6, 0.62, 0.55, 0.70, 0.18, 0.3)
    bad = _row("MedShift 1-step τ=0.6", "student", 0.6, 0.99, 0.94, 1.0, 0.4, 13.0, noise=0.7)
    teacher = [_row("MedShift τ=0.6", "medshift", 0.6, 0.9, 0.8, 1.0, 1.0, 2.5),
               _row("SDEdit τ=0.6", "sdedit", 0.6, 1.0, 1.0, 1.0, 1.0, 0.5)]
    lines = realism_verdicts([_pair("synthetic_low", "real_normal", good, teacher),
                              _pair("real_low", "real_exposure", bad)], 0.6)
    text = "\n".join(lines)
    syn = [ln for ln in lines if ln.startswith("- synthetic_low") and "**" in ln]
    assert len(syn) == 3 and all("**met**" in ln for ln in syn)  # C2ST, well below, curve
    assert "C2ST accuracy 0.62 [0.55, 0.70] (≤ 0.75; identity 1.00, true target 0.53)" in text
    assert "within ±18 % of the target's over the body (±25 %; true target ±2 %)" in text
    dose = [ln for ln in lines if ln.startswith("- real_low") and "**" in ln]
    assert len(dose) == 3 and all("**NOT met**" in ln for ln in dose)  # C2ST, below, noise
    assert "noise level ×0.70" in text
    assert "MedShift τ=0.6 (on 16) 2.50" in text and "true target 0.02" in text


def test_no_realism_columns_no_lines():
    s = _row("MedShift 1-step τ=0.6", "student", 0.6, NAN, NAN, NAN, NAN, NAN)
    p = _pair("synthetic_low", "real_normal", s)
    for r in p.all.rows:
        r.update(c2st_acc=NAN, c2st_lo=NAN, noise_curve_dev=NAN, halluc_count=NAN)
    assert realism_verdicts([p], 0.6) == []
