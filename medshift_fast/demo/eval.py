"""The demo's evaluation and report (``medshift demo``, demo.py runs it).

**Images.** The shipped teacher is tied to the demo's data by its fingerprint, and that data has
36 test views per domain (6 of 40 subjects). The evaluation scores :data:`EXTRA_SUBJECTS` NEW
subjects instead (48 views per domain at 6 views): :func:`eval_dataset` renders them with the
simulator config of the demo's data (same seed, subject ids after its last one, so the same
population: every phantom and noise stream is keyed by (seed, subject, view, domain)) as a
test-only split, beside the demo's train (reference set) and val (tuning of the classical
baselines) images, in ``OUT/eval_data``. The demo's own test subjects are left out, so nothing
changes the data the teacher was checked against.

**Rows.** Per pair (:func:`evaluate_pair`), two ``evaluate`` calls:

1. every new test image: the shipped one-call student at every tau ("MedShift 1-step"), identity,
   the classical baselines (Gaussian, TV, BM3D; tuned on the val split), the true target;
2. ``teacher_images`` of them (spread over the subjects): the teacher (30 network calls per
   image) and SDEdit at the default tau only, with the student and identity beside on the same
   images -- the teacher costs ~30x the student, so it gets fewer rows (stated in the report).

Every row carries the realism and trust columns of ``evaluate`` (C2ST, the noise-vs-signal curve,
hallucinations; in the teacher call the C2ST runs on the teacher and SDEdit rows only: the
others are the first call's, on more images).

The report states every target of issue 22 met or NOT met with its numbers
(:func:`verdicts`), issue 29's realism targets and issue 31's hallucination count per method row
(:mod:`.realism`), the paired bootstrap intervals and KID ± std of both calls, the
noise-vs-signal curves and a 100 %-zoom grid (source, teacher, student, TV, BM3D, true target;
nearest-neighbour, 3 screen pixels per image pixel) per pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..translate.settings import RECIPE

__all__ = ["EXTRA_SUBJECTS", "PairEval", "eval_dataset", "evaluate_pair", "verdicts",
           "zoom_grid"]

EXTRA_SUBJECTS = 8
STUDENT = "MedShift 1-step"
DETERMINISTIC = "MedShift 1-step, noise 0"  # a stochastic student's deterministic member
OTHER_SEED = "MedShift 1-step, seed+1"  # the same student, the next --seed: other mottle
ZOOM_CROP = (40, 32, 40, 64)  # (y, x, h, w) of the 128-px views: skull base, teeth, cortex


@dataclass
class PairEval:
    """The two evaluations of one pair: ``all`` (every test image) and ``teacher`` (the subset
    with the teacher and SDEdit; None without a shipped student: then ``all`` has them)."""

    src: str
    tgt: str
    out: Path
    all: object
    teacher: object | None = None
    zoom: Path | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- images
def eval_dataset(data: Path, root: Path, subjects: int = EXTRA_SUBJECTS,
                 progress: bool = False) -> dict:
    """Write the evaluation dataset into ``root`` (see the module docstring; with the views'
    labels, for the utility section: ``data.extend.add_test_subjects``); returns its summary
    (subjects, views, images per domain, seconds)."""
    from ..data.extend import add_test_subjects

    return add_test_subjects(data, root, subjects, progress)


# ------------------------------------------------------------------------------- evaluation
def _relabel(res, student_run) -> None:
    """Rows of ``evaluate(run=student)``: the model's own rows are the one-call student's."""
    names = {}
    for r in res.rows:
        if r["kind"] == "medshift":
            new = f"{STUDENT} τ={float(r['tau']):g}"
            names[r["method"]] = new
            r["method"], r["kind"] = new, "student"
    res.images = {names.get(k, k): v for k, v in res.images.items()}
    for b in getattr(res, "bootstrap", None) or []:
        b["method"] = names.get(b["method"], b["method"])
    res.settings["checkpoint"] = str(student_run.path)


def evaluate_pair(cfg, teacher, student, data: Path, src: str, tgt: str, ev_out: Path,
                  progress: bool) -> PairEval:
    """The pair's evaluation(s) (module docstring) into ``ev_out`` (+ ``ev_out/teacher``)."""
    from ..eval import report
    from ..eval.evaluate import EvalConfig, evaluate
    from ..translate import Translator

    tau = float(cfg.recipe().get("tau") or RECIPE["tau"])
    base = dict(data=str(data), source=src, target=tgt, seed=cfg.seed, batch_size=16,
                progress=progress, inversion=False, allow_small_n=cfg.quick, **cfg.recipe(),
                **(dict(c2st_seeds=1, c2st_steps=20) if cfg.quick else {}))  # a smoke run
    n_all = cfg.eval_images or None
    if student is None:  # no shipped student (an installed wheel, --quick): the teacher's rows
        res = evaluate(EvalConfig(checkpoint=str(teacher.path), out=str(ev_out), taus=cfg.taus,
                                  max_images=n_all, baselines=True, **base), run=teacher)
        return PairEval(src, tgt, ev_out, res)
    res = evaluate(EvalConfig(checkpoint=str(student.path), out=str(ev_out), taus=cfg.taus,
                              max_images=n_all, baselines=False, **base), run=student)
    _relabel(res, student)
    report.write_all(ev_out, res)
    tr = Translator(student, src, tgt, tau=tau)
    extra = [(f"{STUDENT} τ={tau:g}", "student", tau, tr.translate)]  # first: the one verdicts read
    if getattr(student.model, "stochastic", False):  # its deterministic member, another seed
        for name, kw in ((DETERMINISTIC, dict(noise_scale=0.0)),
                         (OTHER_SEED, dict(seed=int(cfg.seed) + 1))):
            extra.append((f"{name} τ={tau:g}", "student", tau,
                          Translator(student, src, tgt, tau=tau, **kw).translate))
    res_t = evaluate(EvalConfig(checkpoint=str(teacher.path), out=str(ev_out / "teacher"),
                                taus=(tau,), max_images=cfg.teacher_images, baselines=True,
                                classical="none", c2st_kinds="medshift,sdedit", **base),
                     run=teacher, extra_methods=extra)
    pe = PairEval(src, tgt, ev_out, res, res_t)
    try:
        pe.zoom = zoom_grid(pe, tau, ev_out / "zoom.png")
    except MedShiftError as exc:  # a figure never loses the evaluation
        pe.notes.append(f"zoom grid not written: {exc}")
    return pe


def _row(res, kind: str, tau: float | None = None, name: str | None = None):
    for r in res.rows:
        if r["kind"] != kind or (name is not None and not r["method"].startswith(name)):
            continue
        if tau is None or (r["tau"] != "" and abs(float(r["tau"]) - tau) < 1e-9):
            return r
    return None


def zoom_grid(pe: PairEval, tau: float, path: Path) -> Path:
    """Source, teacher, student (a stochastic one: also its deterministic member and a second
    seed), TV, BM3D, true target at 100 % zoom (3 screen px per pixel) on three of the
    teacher's images."""
    from ..eval.figures import save_zoom_grid

    a, t = pe.all, pe.teacher
    src_all, src_t = a.images["source"], t.images["source"]
    idx = []  # where the teacher's images are among all test images
    for i in range(src_t.shape[0]):
        hit = (src_all - src_t[i:i + 1]).flatten(1).abs().amax(1) == 0
        idx.append(int(torch.nonzero(hit)[0]) if bool(hit.any()) else -1)
    if min(idx) < 0:
        raise MedShiftError("the teacher's images are not among the evaluated ones")
    ii = torch.tensor(idx)
    cols = {"source": src_t, "teacher": t.images[_row(t, "medshift", tau)["method"]],
            "student": a.images[f"{STUDENT} τ={tau:g}"][ii]}
    for name, label in ((OTHER_SEED, "student, seed+1"), (DETERMINISTIC, "noise 0")):
        if f"{name} τ={tau:g}" in t.images:
            cols[label] = t.images[f"{name} τ={tau:g}"]
    for key, label in (("tv", "TV"), ("bm3d", "BM3D")):
        r = next((r for r in a.rows if r["kind"] == "classical" and r.get("baseline") == key),
                 None)
        if r is not None:
            cols[label] = a.images[r["method"]][ii]
    cols["true target"] = t.images["target (true)"]
    n = src_t.shape[0]
    rows = sorted({0, n // 2, n - 1})
    h, w = src_t.shape[-2:]
    y, x, ch, cw = ZOOM_CROP
    crop = (y, x, ch, cw) if y + ch <= h and x + cw <= w else (0, 0, min(h, 40), min(w, 64))
    return save_zoom_grid(path, cols, list(cols), rows, crop, zoom=3)


# --------------------------------------------------------------------------------- verdicts
def _met(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def verdicts(pairs: list[PairEval], tau: float) -> list[str]:
    """Issue 22's targets at the default tau, each met or NOT met with its numbers."""
    from ..eval.pareto import dominated_by

    out = []
    for pe in pairs:
        a = pe.all
        s = _row(a, "student", tau) or _row(a, "medshift", tau)
        ident, true = _row(a, "baseline"), _row(a, "oracle")
        if s is None or ident is None:
            continue
        who, n = s["method"], a.settings.get("n_images")
        if (pe.src, pe.tgt) == ("synthetic_low", "real_normal"):
            ratio = s["fid_enl0"] / max(ident["fid_enl0"], 1e-12)
            checks = [(s["ssim_src"] >= 0.85, f"SSIM vs source {s['ssim_src']:.3f} (≥ 0.85)"),
                      (ratio <= 0.5, f"FID-ENL0 {s['fid_enl0']:.1f} = {100 * ratio:.0f} % of "
                                     f"identity's {ident['fid_enl0']:.1f} (≤ 50 %)")]
            if true is not None:
                checks += [
                    (s["coverage"] >= 0.5 * true["coverage"],
                     f"coverage {s['coverage']:.2f} (≥ half the true target's "
                     f"{true['coverage']:.2f})"),
                    (s["nps_dist"] <= 2 * true["nps_dist"],
                     f"NPS distance {s['nps_dist']:.2f} (≤ 2× the true target's "
                     f"{true['nps_dist']:.2f})")]
            checks.append((0.8 <= s["noise_ratio"] <= 1.25,
                           f"noise level ×{s['noise_ratio']:.2f} of the target's (0.8–1.25)"))
        else:
            gain = s["psnr_tgt"] - ident["psnr_tgt"]
            hits = dominated_by(a.rows, s, kinds=("classical",))
            if pe.teacher is not None:
                st = _row(pe.teacher, "student", tau)
                hits += [(p, m + f" (on the {pe.teacher.settings['n_images']} teacher images)")
                         for p, m in dominated_by(pe.teacher.rows, st, kinds=("sdedit",))]
            else:
                hits += dominated_by(a.rows, s, kinds=("sdedit",))
            checks = [(not hits, "Pareto-dominated by no classical baseline or SDEdit point on "
                                 "(PSNR vs true target, NPS distance) or (PSNR, FID-ENL0)"
                       if not hits else "Pareto-DOMINATED: " + "; ".join(
                           f"({p}) by {m}" for p, m in hits)),
                      (gain >= 4.0, f"PSNR vs the true high-dose view {s['psnr_tgt']:.2f} dB = "
                                    f"identity {gain:+.2f} dB (≥ +4 dB)")]
        for ok, text in checks:
            out.append(f"- {pe.src} → {pe.tgt}, {who}, {n} test images: {text}: {_met(ok)}")
        out += _teacher_verdict(pe, tau)
    return out


def _teacher_verdict(pe: PairEval, tau: float) -> list[str]:
    t = pe.teacher
    if t is None:
        return []
    s, m = _row(t, "student", tau), _row(t, "medshift", tau)
    if s is None or m is None:
        return []
    n = t.settings["n_images"]
    checks = [(s["fid_enl0"] <= m["fid_enl0"], f"FID-ENL0 {s['fid_enl0']:.1f} vs the teacher's "
                                               f"{m['fid_enl0']:.1f}"),
              (s["kid"] <= m["kid"], f"KID {s['kid']:.4f} ± {s.get('kid_std', 0):.4f} vs "
                                     f"{m['kid']:.4f} ± {m.get('kid_std', 0):.4f}"),
              (s["coverage"] >= m["coverage"], f"coverage {s['coverage']:.2f} vs "
                                               f"{m['coverage']:.2f}"),
              (abs(s["ssim_src"] - m["ssim_src"]) <= 0.02,
               f"SSIM vs source {s['ssim_src']:.3f} vs {m['ssim_src']:.3f}, Δ "
               f"{s['ssim_src'] - m['ssim_src']:+.3f} (within ±0.02)")]
    return [f"- {pe.src} → {pe.tgt}, student vs its teacher at τ={tau:g} on the teacher's {n} "
            f"images: {text}: {_met(ok)}" for ok, text in checks]


# ----------------------------------------------------------------------------------- report
def student_vs_teacher(pe: PairEval, tau: float) -> dict | None:
    """On the teacher's images at ``tau``: the student's PSNR against the teacher's translations
    and its metrics relative to the teacher's (1.00 = equal)."""
    from ..eval import psnr

    t = pe.teacher
    if t is None:
        return None
    s, m = _row(t, "student", tau), _row(t, "medshift", tau)
    if s is None or m is None:
        return None
    row = {"tau": tau, "n": t.settings["n_images"],
           "psnr_vs_teacher": float(psnr(t.images[s["method"]], t.images[m["method"]]))}
    for k in ("ssim_src", "psnr_tgt", "fid_enl0", "kid", "coverage", "nps_dist", "noise_ratio"):
        row[k] = (s[k], m[k])
    return row


def _teacher_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = (("ssim_src", "SSIM src", "{:.3f}"), ("psnr_tgt", "PSNR tgt", "{:.2f}"),
            ("fid_enl0", "FID-ENL0", "{:.1f}"), ("kid", "KID", "{:.4f}"),
            ("coverage", "Cov", "{:.2f}"), ("nps_dist", "NPS", "{:.2f}"),
            ("noise_ratio", "noise ×tgt", "{:.2f}"))
    out = ["| pair | n | student's PSNR vs teacher (dB) | " + " | ".join(
        f"{k[1]} student / teacher" for k in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for pair, r in rows:
        out.append(f"| {pair} | {r['n']} | {r['psnr_vs_teacher']:.1f} | " + " | ".join(
            f"{k[2].format(r[k[0]][0])} / {k[2].format(r[k[0]][1])}" for k in keys) + " |")
    return out


def verdict_lines(cfg, pairs: list[PairEval]) -> list[str]:
    """The report's verdict: issue 22's targets at the default tau, met or NOT met (issue 29's
    and 31's follow: :func:`.realism.realism_lines`)."""
    tau = float(cfg.recipe().get("tau") or RECIPE["tau"])
    return [f"Issue 22's targets at the default τ = {tau:g}:", "", *verdicts(pairs, tau)]


def report_lines(cfg, pairs: list[PairEval], out: Path) -> list[str]:
    """The per-pair sections of the demo's report (demo.py writes the rest)."""
    from ..eval.report import (
        bootstrap_table,
        classical_lines,
        dominance,
        markdown_table,
        small_n_lines,
        verdict_lines,
    )

    tau = float(cfg.recipe().get("tau") or RECIPE["tau"])
    vs = [(f"{pe.src} → {pe.tgt}", r) for pe in pairs
          if (r := student_vs_teacher(pe, tau)) is not None]
    lines = []
    if vs:
        lines += ["## The student and its teacher", "", "On the teacher's images (same images, "
                  f"τ = {tau:g}):", "", *_teacher_table(vs), ""]
    for pe in pairs:
        a, t = pe.all, pe.teacher
        rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
        lines += [f"## {pe.src} → {pe.tgt}", "",
                  *[f"{x}\n" for x in small_n_lines(a.settings["n_images"],
                                                    a.settings["n_reference"])],
                  markdown_table(a.rows), "",
                  *[f"- {x}" for x in verdict_lines(a.rows)],
                  *[f"- {x}" for x in dominance(a.rows)], ""]
        tuned = a.settings.get("classical_tuning") or []
        if tuned:
            lines += ["Classical baselines, tuned on the validation split (never the test "
                      "split):", "", *[f"- {x}" for x in classical_lines(tuned)], ""]
        boot = getattr(a, "bootstrap", None) or []
        if boot:
            chosen = [r["method"] for r in a.rows if r["kind"] in ("student", "medshift")
                      and r["tau"] != "" and abs(float(r["tau"]) - tau) < 1e-9]
            lines += [f"Paired bootstrap (method − baseline, {boot[0]['level']:.0%} interval, "
                      f"{boot[0]['resamples']} resamples of the {boot[0]['n']} images; ▲/▼: "
                      "resolved for / against the method):", "",
                      bootstrap_table(boot, chosen or None), ""]
        if t is not None:
            n_t = t.settings["n_images"]
            lines += [f"The teacher (30 network calls per image) and SDEdit at τ = {tau:g}, on "
                      f"{n_t} of the test images (spread over the subjects), with the student "
                      "and identity on the same images:", "",
                      *[f"{x}\n" for x in small_n_lines(n_t, t.settings["n_reference"])],
                      markdown_table(t.rows), "", *[f"- {x}" for x in verdict_lines(t.rows)],
                      ""]
            tb = getattr(t, "bootstrap", None) or []
            if tb:
                lines += [bootstrap_table(tb), ""]
        lines += [f"![grid]({rel(pe.out)}/grid.png)", "",
                  f"![tradeoff]({rel(pe.out)}/tradeoff.png)", ""]
        if (pe.out / "noise_curve.png").is_file():
            lines += [f"![noise vs signal]({rel(pe.out)}/noise_curve.png)", ""]
        if pe.zoom is not None:
            lines += ["100 % zoom (3 screen pixels per image pixel; source, teacher, student "
                      "(a stochastic one also at the next seed and at noise 0), TV, BM3D, true "
                      "target on three of the teacher's images):", "",
                      f"![zoom]({rel(pe.zoom)})", ""]
        lines += [f"- {n}" for n in pe.notes]
    return lines
