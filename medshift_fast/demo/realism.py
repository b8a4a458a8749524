"""The demo's verdicts on issue 29's realism targets and issue 31's hallucination count, from
the realism columns of its evaluations (``eval.realism``: C2ST, the noise-vs-signal curve,
hallucinations)."""

from __future__ import annotations

from ..translate.settings import RECIPE
from .eval import PairEval, _met, _row


def realism_verdicts(pairs: list[PairEval], tau: float) -> list[str]:
    """Issue 29's realism targets at the default tau (``eval.realism.realism_checks``: C2ST,
    the noise-vs-signal curve on synthetic → real, the noise level on the dose pair), each met
    or NOT met, and issue 31's hallucination count per method row."""
    from ..eval.realism import hallucination_line, realism_checks

    out = []
    for pe in pairs:
        a = pe.all
        s = _row(a, "student", tau) or _row(a, "medshift", tau)
        if s is None:
            continue
        curve = (pe.src, pe.tgt) != ("real_low", "real_exposure")
        for ok, text in realism_checks(s, _row(a, "baseline"), _row(a, "oracle"), curve):
            out.append(f"- {pe.src} → {pe.tgt}, {s['method']}, {a.settings.get('n_images')} "
                       f"test images: {text}: {_met(ok)}")
        rows = list(a.rows)
        if pe.teacher is not None:  # the teacher and SDEdit, on their subset
            n_t = pe.teacher.settings["n_images"]
            rows += [{**r, "method": f"{r['method']} (on {n_t})"} for r in pe.teacher.rows
                     if r["kind"] in ("medshift", "sdedit")]
        line = hallucination_line(rows)
        if line:
            out.append(f"- {pe.src} → {pe.tgt}, {line}")
    return out



def realism_lines(cfg, pairs: list[PairEval]) -> list[str]:
    """The report's verdict block after issue 22's: a heading and :func:`realism_verdicts` at
    the default tau (nothing when no realism column was computed)."""
    tau = float(cfg.recipe().get("tau") or RECIPE["tau"])
    v = realism_verdicts(pairs, tau)
    return ["", f"Issue 29's realism targets and issue 31's hallucinations at τ = {tau:g}:", "",
            *v] if v else []
