"""Is the detector noise model (models/texture.py) right, and what does the C2ST need beyond it?

On the demo's simulated data (its simulator config, ``DATA/simulator.json``), for each real
target domain of the shipped pairs (real_normal, real_exposure):

* the model fitted to the domain's TRAINING images (what ``medshift distill --texture
  detector`` records): correlation sigma, amplitude range;
* scored against those training images by the C2ST (``eval.c2st``, its defaults) and the
  noise-vs-signal curve (``eval.noise_curve``, max |ratio − 1| over the body), on the
  validation subjects' views, re-rendered by the simulator: the real (noisy) views (the floor),
  the simulator's noise-free expectation (a perfect denoiser's output), that expectation plus
  the model's noise (a perfect noise-free translation under this model), and the expectation
  blurred by a Gaussian of 0.5 / 0.7 / 1.0 px before the model's noise (a noise-free image a
  little less sharp than the truth).

With ``--student NAME=RUN[@SCALE]`` (repeatable), what the C2ST sees in each student's output
on the same validation views (pairs synthetic_low -> real_normal and real_low -> real_exposure,
tau 0.6): the source rendered twice with independent noise (same anatomy), the student's
noise-free translations c1, c2 of both, and the noise-free target T. The residual splits into a
part that follows the source's noise, rn = (c1 - c2) / sqrt 2, and a deterministic part,
rb = (c1 + c2) / 2 - T (blur, bias, invented detail); the C2ST scores T + model noise + rn,
T + model noise + rb and T + model noise + rb's fine band (rb minus its 1-px low-pass): each
part alone on a perfect translation, beside the student's output at its noise scale. The
*equivalent blur* (:func:`equivalent_blur`) says how much softer than T the mean noise-free
translation is. Writes the ``texture-residual`` block with ``--doc``.

With ``--oracle``: the bound of the "noise-free member + detector grain" design. A small
U-Net is trained *with the simulator's truth* (paired: each training subject's source views,
rendered with fresh noise, against the noise-free target view; MSE, so it estimates the
posterior mean, which no unpaired student can beat in MSE) and the target's detector noise
model is added to its output at several scales; beside it, the teacher's own stochastic (SDE)
decode at tau 0.6. Never shipped or used in training: it says what the C2ST asks of a design.
The ``texture-oracle`` block; the estimator is scored after a quarter, half and all of its
steps, so the block also says how its bound moves with the training budget.

With ``--unpaired-dose``: the same estimator on the dose pair trained WITHOUT the truth or
pairs (Noisier2Noise with the two domains' fitted noise models, :func:`unpaired_dose`): how
close an unpaired student's noise-free member can come to the oracle. The ``texture-unpaired``
block.

The expectation is available only because the data are simulated; nothing here is used in
training. Writes the ``texture-model`` block of docs/distill.md with ``--doc``.

With ``--precision``, instead: each student through the Translator in fp32 and in bf16 (the
rounding of bf16 is a texture too; ``translate.engine``'s grain bar): the ``texture-precision``
block.

    python scripts/texture_numbers.py [--data runs/pretrain/data] [--doc]
        [--student tex=pretrained/demo128_lean_tex ...] [--no-model] [--precision]
    python scripts/texture_numbers.py --no-model --oracle [--teacher pretrained/demo128] [--doc]
    python scripts/texture_numbers.py --no-model --unpaired-dose [--oracle-steps N] [--doc]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("real_normal", "real_exposure")
BLURS = (0.5, 0.7, 1.0)


def _train_images(data: str, domain: str):
    from medshift_fast.data import FolderDataset

    ds = FolderDataset(data, split="train", domains=(domain,))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, [s.subject or s.view_id or str(s.path) for s in ds.samples]


def _subjects(data: str, split: str = "val"):
    """The simulator config of the demo data and its subjects of ``split``."""
    from medshift_fast.data.simulator import SimConfig, subject_splits

    cfg = SimConfig.from_dict(json.loads((Path(data) / "simulator.json").read_text())["config"])
    return cfg, [i for i, s in enumerate(subject_splits(cfg)) if s == split]


def score(data: str) -> list[dict]:
    from medshift_fast.data.simulator import render_subject
    from medshift_fast.eval.c2st import c2st
    from medshift_fast.eval.noise_curve import curve_deviation, noise_curve, signal_bins
    from medshift_fast.models.texture import DetectorNoise, _blur

    cfg, val = _subjects(data)
    rows = []
    for dom in DOMAINS:
        ref, g_ref = _train_images(data, dom)
        model = DetectorNoise.fit(ref)
        edges = signal_bins(ref)
        c_ref = noise_curve(ref, edges)
        noisy, clean, groups = [], [], []
        for i in val:
            noisy.append(render_subject(cfg, i)[dom])
            clean.append(render_subject(cfg, i, noise=False)[dom])
            groups += [f"s{i:03d}"] * noisy[-1].shape[0]
        noisy = torch.cat(noisy).unsqueeze(1).float()
        clean = torch.cat(clean).unsqueeze(1).float()
        gen = torch.Generator().manual_seed(0)
        n = torch.randn(clean.shape, generator=gen)
        sets = {"real views (noisy)": noisy, "noise-free expectation": clean,
                "noise-free + model noise": (clean + model.noise(clean, n)).clamp(-1, 1)}
        for b in BLURS:
            cb = _blur(clean.double(), b).float()
            sets[f"blurred {b:g} px + model noise"] = (cb + model.noise(cb, n)).clamp(-1, 1)
        for name, y in sets.items():
            r = c2st(ref, y, real_groups=g_ref, fake_groups=groups)
            dev = curve_deviation(noise_curve(y, edges), c_ref)
            rows.append({"domain": dom, "set": name, "c2st": r.accuracy, "lo": r.lo,
                         "hi": r.hi, "curve_dev": dev, "n": int(y.shape[0]),
                         "model": model.describe()})
            print(f"{dom:14s} {name:30s} C2ST {r.accuracy:.2f} [{r.lo:.2f}, {r.hi:.2f}] "
                  f"curve dev {dev:.2f}", flush=True)
    return rows


PAIRS = (("synthetic_low", "real_normal"), ("real_low", "real_exposure"))


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


@torch.no_grad()
def _noise_free(st, x, tau, ys, yt, n, scale) -> torch.Tensor:
    """The student's translations of x in batches of 8 (noise maps n at ``scale``)."""
    return torch.cat([st.translate(x[k:k + 8], tau, ys[k:k + 8], yt[k:k + 8], n[k:k + 8],
                                   noise_scale=scale)
                      for k in range(0, x.shape[0], 8)]).clamp(-1, 1)


BANDS = (0.125, 0.1875, 0.25, 0.3125, 0.375)  # cycles / px: where the anatomy still has power
BLUR_GRID = [round(0.025 * k, 3) for k in range(61)]  # 0 .. 1.5 px


def transfer(c: torch.Tensor, T: torch.Tensor) -> list[float]:
    """The transfer of T into c per radial frequency band (``BANDS``): the Hann-windowed
    cross power Re<C T*> over T's power, summed over the band's frequencies (1: c keeps T's
    detail at that frequency; a blur: its modulation transfer)."""
    h, w = T.shape[-2:]
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                      torch.hann_window(w, periodic=False, dtype=torch.float64))
    m = T.double().mean((-2, -1), keepdim=True)
    C = torch.fft.fft2((c.double() - m) * win)
    F_ = torch.fft.fft2((T.double() - m) * win)
    cross = (C * F_.conj()).real.sum((0, 1))
    power = F_.abs().square().sum((0, 1))
    f = torch.hypot(*torch.meshgrid(torch.fft.fftfreq(h, dtype=torch.float64),
                                    torch.fft.fftfreq(w, dtype=torch.float64), indexing="ij"))
    return [float(cross[(f >= a) & (f < b)].sum() / power[(f >= a) & (f < b)].sum())
            for a, b in zip(BANDS[:-1], BANDS[1:])]


def equivalent_blur(c: torch.Tensor, T: torch.Tensor) -> float:
    """The std (px) of the Gaussian blur of T whose transfer (:func:`transfer`) is closest to
    c's over ``BANDS`` (least squares on ``BLUR_GRID``): how much sharper or softer than the
    truth a translation is, in the units of the texture-model table's blurred rows (0: at
    least as sharp as T, the grid's end)."""
    from medshift_fast.models.texture import _blur

    mine = torch.tensor(transfer(c, T))
    err = {s: float((torch.tensor(transfer(_blur(T.double(), s).float(), T)) - mine)
                    .square().sum()) for s in BLUR_GRID}
    return min(err, key=err.get)


def residuals(data: str, students: dict[str, str], tau: float = 0.6) -> list[dict]:
    """The residual decomposition of each student's noise-free translation (module docstring)."""
    import dataclasses

    from medshift_fast.data.simulator import render_domains, render_subject, subject_line_integrals
    from medshift_fast.eval.c2st import c2st
    from medshift_fast.eval.image import psnr
    from medshift_fast.eval.physics import noise_level
    from medshift_fast.models.texture import DetectorNoise, _blur
    from medshift_fast.run import load_run

    cfg, val = _subjects(data)
    views = {}  # subject -> (noisy, noise-free, noisy with other noise)
    for i in val:
        _, _, L = subject_line_integrals(cfg, i)
        other = [render_domains(L[v], cfg, [cfg.seed + 999, i, v]) for v in range(L.shape[0])]
        views[i] = (render_subject(cfg, i), render_subject(cfg, i, noise=False),
                    {d: torch.stack([o[d] for o in other]) for d in other[0]})

    def stack(k: int, dom: str) -> torch.Tensor:
        return torch.cat([views[i][k][dom] for i in val]).unsqueeze(1).float()

    rows = []
    for name, spec in students.items():
        path, _, scale = spec.partition("@")
        run = load_run(path)
        st = run.model.eval()
        if scale:
            st.config = dataclasses.replace(st.config, noise_scale=float(scale))
        names = list(run.domains)
        for src, tgt in PAIRS:
            ref, g_ref = _train_images(data, tgt)
            model = DetectorNoise.fit(ref)
            x1, x2, T = stack(0, src), stack(2, src), stack(1, tgt)
            groups = [f"s{i:03d}" for i in val for _ in range(views[i][0][src].shape[0])]
            b = x1.shape[0]
            ys = torch.full((b,), names.index(src))
            yt = torch.full((b,), names.index(tgt))
            n = torch.randn((b, 1, *x1.shape[-2:]), generator=torch.Generator().manual_seed(0))

            c1, c2, y = (_noise_free(st, x, tau, ys, yt, n, s)
                         for x, s in ((x1, 0.0), (x2, 0.0), (x1, None)))
            N = model.noise(T, torch.randn(T.shape, generator=torch.Generator().manual_seed(1)))
            rn, rb = (c1 - c2) / 2 ** 0.5, (c1 + c2) / 2 - T
            rb_fine = rb - _blur(rb.double(), 1.0).float()
            view = stack(0, tgt)  # the true target view (noisy: the simulator's other dose)
            row = {"student": name, "pair": f"{src} → {tgt}", "scale": st.config.noise_scale,
                   "rn": _rms(rn), "rb": _rms(rb), "N": _rms(N),
                   "blur": equivalent_blur((c1 + c2) / 2, T),
                   "psnr": float(psnr(y.clamp(-1, 1), view)), "psnr_id": float(psnr(x1, view)),
                   "noise": float(noise_level(y.clamp(-1, 1), reduction="mean")
                                  / noise_level(ref, reduction="mean"))}
            for key, im in (("c2st_rn", T + N + rn), ("c2st_rb", T + N + rb),
                            ("c2st_rb_fine", T + N + rb_fine), ("c2st", y)):
                r = c2st(ref, im.clamp(-1, 1), real_groups=g_ref, fake_groups=groups)
                row[key] = (r.accuracy, r.lo, r.hi)
            rows.append(row)
            print(f"{name:10s} {src:14s} rms rn {row['rn']:.4f} rb {row['rb']:.4f} N "
                  f"{row['N']:.4f} blur {row['blur']:.3f} px C2ST T+N+rn "
                  f"{row['c2st_rn'][0]:.2f} T+N+rb {row['c2st_rb'][0]:.2f} fine "
                  f"{row['c2st_rb_fine'][0]:.2f} output {row['c2st'][0]:.2f} PSNR "
                  f"{row['psnr']:.2f} (id {row['psnr_id']:.2f}) noise x{row['noise']:.2f}",
                  flush=True)
    return rows


def precision(data: str, students: dict[str, str], tau: float = 0.6) -> list[dict]:
    """Each student through the Translator in fp32 and in bf16 (explicitly asked: what
    ``auto`` took before the grain bar) on the validation images: the rms of the difference,
    the noise level relative to the target domain's training images, the C2ST."""
    import dataclasses

    from medshift_fast.eval._data import load_domain
    from medshift_fast.eval.c2st import c2st
    from medshift_fast.eval.physics import noise_level
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    rows = []
    for name, spec in students.items():
        path, _, scale = spec.partition("@")
        run = load_run(path)
        if scale:
            run.model.config = dataclasses.replace(run.model.config, noise_scale=float(scale))
        for src, tgt in PAIRS:
            xs = load_domain(data, src, "val", None)
            ref = load_domain(data, tgt, "train", None)
            level = float(noise_level(ref.x, reduction="mean"))
            out = {}
            for bf16 in (False, True):
                tr = Translator(run, src, tgt, tau=tau, bf16=bf16, engine="channels_last")
                with torch.no_grad():
                    y = torch.cat([tr.translate(xs.x[k:k + 8], generators=[
                        torch.Generator().manual_seed(i) for i in range(k, min(k + 8,
                                                                              xs.x.shape[0]))])
                        for k in range(0, xs.x.shape[0], 8)]).clamp(-1, 1)
                r = c2st(ref.x, y, real_groups=ref.groups(), fake_groups=xs.groups())
                out[bf16] = (y, float(noise_level(y, reduction="mean")) / level,
                             (r.accuracy, r.lo, r.hi))
            rows.append({"student": name, "pair": f"{src} → {tgt}",
                         "rms": _rms(out[True][0] - out[False][0]),
                         "noise": (out[False][1], out[True][1]),
                         "c2st": (out[False][2], out[True][2])})
            r = rows[-1]
            print(f"{name:10s} {src:14s} bf16 - fp32 rms {r['rms']:.5f} noise x{r['noise'][0]:.2f}"
                  f" / x{r['noise'][1]:.2f} C2ST {r['c2st'][0][0]:.2f} / {r['c2st'][1][0]:.2f}",
                  flush=True)
    return rows


ORACLE_SCALES = (0.6, 0.8, 1.0)


def _oracle_net(w: int = 32) -> torch.nn.Module:
    """A residual U-Net: two stride-2 levels (w / 2w / 4w channels), GELU, ~0.76 M parameters."""
    import torch.nn as nn
    import torch.nn.functional as F

    def blk(a: int, b: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.GELU(),
                             nn.Conv2d(b, b, 3, padding=1), nn.GELU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2, self.e3, self.m = blk(1, w), blk(w, 2 * w), blk(2 * w, 4 * w), \
                blk(4 * w, 4 * w)
            self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), blk(4 * w, 2 * w)
            self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), blk(2 * w, w)
            self.o = nn.Conv2d(w, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.e1(x)
            b = self.e2(F.avg_pool2d(a, 2))
            c = self.m(self.e3(F.avg_pool2d(b, 2)))
            b = self.d2(torch.cat([self.u2(c), b], 1))
            return x + self.o(self.d1(torch.cat([self.u1(b), a], 1)))

    return Net()


def oracle(data: str, teacher: str | None, steps: int = 6000, renders: int = 5,
           tau: float = 0.6) -> list[dict]:
    """The supervised oracle's and the teacher's SDE decode's C2ST (module docstring), the
    oracle scored after a quarter, half and all of its ``steps`` (its trend with budget)."""
    from medshift_fast.data.simulator import render_domains, render_subject, subject_line_integrals

    cfg, train = _subjects(data, "train")
    val = _subjects(data)[1]
    noisy, clean = {d: [] for d in cfg.domains}, {d: [] for d in cfg.domains}
    for i in train:
        L = subject_line_integrals(cfg, i)[2]
        for v in range(L.shape[0]):
            c = render_domains(L[v], cfg, None)
            for k in range(renders):  # noise streams apart from the dataset's own
                r = render_domains(L[v], cfg, [cfg.seed + 5000 + k, i, v])
                for d in cfg.domains:
                    noisy[d].append(r[d])
                    clean[d].append(c[d])
    views = {i: (render_subject(cfg, i), render_subject(cfg, i, noise=False)) for i in val}
    rows = []
    for src, tgt in PAIRS:
        X = torch.stack(noisy[src]).unsqueeze(1).float()
        Y = torch.stack(clean[tgt]).unsqueeze(1).float()

        def paired(idx, oy, ox, X=X, Y=Y):
            return X[idx, :, oy:oy + 64, ox:ox + 64], Y[idx, :, oy:oy + 64, ox:ox + 64]

        rows += _estimator(data, src, tgt, paired, X.shape, views, val, steps, teacher, tau,
                           "oracle mean")
    return rows


def unpaired_dose(data: str, steps: int = 6000) -> list[dict]:
    """The dose pair's mean estimated WITHOUT the truth or pairs (Noisier2Noise, Moran et al.,
    CVPR 2020, with the fitted detector noise models): only the target domain's training images
    y, made into pseudo-sources z = y + m with var(m) = a_src(y)² − a_tgt(y)² (each domain's
    :class:`DetectorNoise` fitted from its own training images, the target's correlation),
    and f(z) ≈ y by MSE. f then sees the source's noise level; it keeps the part of y's own
    noise that z reveals, a fraction a_tgt² / a_src² (about 1/13 of the variance here), which
    Noisier2Noise's correction would remove (left out: on a scratch run it changed rms and C2ST
    by < 0.0002 and 0.01). Scored like :func:`oracle`; never shipped."""
    from medshift_fast.data.simulator import render_subject
    from medshift_fast.models.texture import DetectorNoise

    src, tgt = PAIRS[1]
    cfg, val = _subjects(data)
    views = {i: (render_subject(cfg, i), render_subject(cfg, i, noise=False)) for i in val}
    Y = _train_images(data, tgt)[0].float()
    m_src, m_tgt = DetectorNoise.fit(_train_images(data, src)[0]), DetectorNoise.fit(Y)
    gen = torch.Generator().manual_seed(2)

    def pseudo(idx, oy, ox):
        y = Y[idx, :, oy:oy + 64, ox:ox + 64]
        extra = (m_src.amplitude(y) ** 2 - m_tgt.amplitude(y) ** 2).clamp_min(0).sqrt()
        return y + extra * m_tgt.correlate(torch.randn(y.shape, generator=gen)), y

    return _estimator(data, src, tgt, pseudo, Y.shape, views, val, steps, None, 0.0,
                      "unpaired mean (Noisier2Noise)")


def _estimator(data: str, src: str, tgt: str, batch, shape: torch.Size, views: dict,
               val: list[int], steps: int, teacher: str | None, tau: float,
               label: str) -> list[dict]:
    """Train a :func:`_oracle_net` on ``batch(idx, oy, ox) -> (input, target)`` 64² crops of
    the training set of ``shape`` (N, 1, H, W) by MSE; score the truth plus grain, the
    estimator plus grain at a quarter, half and all of ``steps``, and the teacher's SDE
    decode."""
    import torch.nn.functional as F

    from medshift_fast.eval.c2st import c2st
    from medshift_fast.models.texture import DetectorNoise

    checkpoints = sorted({max(1, steps // 4), max(1, steps // 2), steps})
    rows: list[dict] = []
    pair = f"{src} → {tgt}"
    ref, g_ref = _train_images(data, tgt)
    model = DetectorNoise.fit(ref)
    x = torch.cat([views[i][0][src] for i in val]).unsqueeze(1).float()
    T = torch.cat([views[i][1][tgt] for i in val]).unsqueeze(1).float()
    groups = [f"s{i:03d}" for i in val for _ in range(views[i][0][src].shape[0])]
    n = torch.randn(T.shape, generator=torch.Generator().manual_seed(1))

    def scored(name: str, im: torch.Tensor, c=None, at=None) -> None:
        r = c2st(ref, im.clamp(-1, 1), real_groups=g_ref, fake_groups=groups)
        rows.append({"pair": pair, "set": name, "steps": at, "c2st": (r.accuracy, r.lo, r.hi),
                     "rms": None if c is None else _rms(c - T),
                     "blur": None if c is None else equivalent_blur(c, T)})
        print(f"{src:14s} {name:32s} {at or '':>5} C2ST {r.accuracy:.2f} "
              f"[{r.lo:.2f}, {r.hi:.2f}]", flush=True)

    scored("truth T + grain (the floor)", T + model.noise(T, n))
    torch.manual_seed(0)
    net = _oracle_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        net.train()
        idx = torch.randint(0, shape[0], (16,), generator=gen)
        oy, ox = torch.randint(0, shape[-1] - 63, (2,), generator=gen).tolist()
        xb, yb = batch(idx, oy, ox)
        if step % 2:
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = F.mse_loss(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            print(f"{label} {src} step {step} rms {float(loss.detach()) ** 0.5:.4f}", flush=True)
        if step in checkpoints:
            net.eval()
            with torch.no_grad():
                c = torch.cat([net(x[k:k + 12]) for k in range(0, len(x), 12)]).clamp(-1, 1)
            for s in ORACLE_SCALES:
                scored(f"{label} + grain × {s:g}", c + s * model.noise(c, n), c, step)
    if teacher:
        from medshift_fast.translate import Translator

        tr = Translator(teacher, src, tgt, tau=tau, decode="sde")
        with torch.no_grad():
            y = torch.cat([tr.translate(x[k:k + 12], generators=[
                torch.Generator().manual_seed(j) for j in range(k, min(k + 12, len(x)))])
                for k in range(0, len(x), 12)])
        scored(f"teacher, SDE decode (τ {tau:g})", y)
    return rows


ORACLE_ABOUT = ("oracle: a residual U-Net, 0.76 M parameters, Adam with a one-cycle schedule, "
                "16 × 64² px crops from the training subjects' views in 5 extra noise "
                "renderings each, MSE against the noise-free target view")
UNPAIRED_ABOUT = ("the oracle's network and schedule, trained on the target domain's training "
                  "images only (no truth, no pairs): each crop y plus the source's extra "
                  "detector noise, var = a_src(y)² − a_tgt(y)², against y")


def estimator_block(rows: list[dict], flags: str, data: str, about: str) -> str:
    lines = [f"Written by `python scripts/texture_numbers.py {flags} --doc` (data `{data}`; "
             f"{about}; scored after a quarter, half and all of its steps on the validation "
             "subjects' views; C2ST against the target domain's training images).", "",
             "| pair | images | steps | rms mean − T | equivalent blur (px) "
             "| C2ST↓ [95 % CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        rms = "–" if r["rms"] is None else f"{r['rms']:.4f}"
        blur = "–" if r["blur"] is None else f"{r['blur']:.2f}"
        at = "–" if r["steps"] is None else str(r["steps"])
        lines.append(f"| {r['pair']} | {r['set']} | {at} | {rms} | {blur} | "
                     f"{_CI(*r['c2st'])} |")
    return "\n".join(lines)


_CI = "{:.2f} [{:.2f}, {:.2f}]".format


def _student_table(flags: str, students: dict[str, str], about: str, header: list[str],
                   cells: list[list[str]]) -> str:
    """A block: the command that wrote it (``flags`` and the students), ``about`` in
    brackets, then the table of ``header`` and one row of ``cells`` per entry."""
    args = " ".join(f"--student {k}={v}" for k, v in students.items())
    lines = [f"Written by `python scripts/texture_numbers.py --no-model {flags}{args} --doc` "
             f"({about}).", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def precision_block(rows: list[dict], students: dict[str, str], data: str) -> str:
    return _student_table(
        "--precision ", students,
        f"data `{data}`; validation images, τ 0.6, the channels_last engine in fp32 and in "
        "bf16; noise level relative to the target domain's training images; C2ST against them",
        ["student", "pair", "rms bf16 − fp32", "noise ×tgt fp32", "noise ×tgt bf16",
         "C2ST fp32", "C2ST bf16"],
        [[r["student"], r["pair"], f"{r['rms']:.5f}", f"{r['noise'][0]:.2f}",
          f"{r['noise'][1]:.2f}", _CI(*r["c2st"][0]), _CI(*r["c2st"][1])] for r in rows])


RESIDUAL = "texture-residual"  # the residual table's block; others (--block) add PSNR / noise


def residual_block(rows: list[dict], students: dict[str, str], data: str,
                   name: str = RESIDUAL) -> str:
    extra = name != RESIDUAL
    return _student_table(
        "" if not extra else f"--block {name} ", students,
        f"data `{data}`; the validation subjects' views re-rendered with a second, independent "
        "source noise; τ 0.6; C2ST against the target domain's training images; rms in image "
        "units" + ("; PSNR of the output against the true target view (the simulator's "
                   "noisy render at the target dose), identity's in brackets; noise: the "
                   "output's noise level over the target's training images'" if extra else ""),
        ["student", "pair", "rms rn (follows the source noise)", "rms rb (deterministic)",
         "rms target noise", "equivalent blur (px)", "C2ST T + noise + rn",
         "C2ST T + noise + rb", "C2ST T + noise + rb's fine band", "C2ST output (scale)"]
        + (["PSNR dB (identity)", "noise ×target"] if extra else []),
        [[r["student"], r["pair"], f"{r['rn']:.4f}", f"{r['rb']:.4f}", f"{r['N']:.4f}",
          f"{r['blur']:.2f}", _CI(*r["c2st_rn"]), _CI(*r["c2st_rb"]), _CI(*r["c2st_rb_fine"]),
          f"{_CI(*r['c2st'])} ({r['scale']:g})"]
         + ([f"{r['psnr']:.2f} ({r['psnr_id']:.2f})", f"{r['noise']:.2f}"] if extra else [])
         for r in rows])


def block(rows: list[dict], data: str) -> str:
    lines = [f"Written by `python scripts/texture_numbers.py --doc` (data `{data}`; each model "
             "fitted to the domain's training images; scored on the validation subjects' "
             f"{rows[0]['n']} views against those training images).", ""]
    for dom in DOMAINS:
        lines.append(f"- {dom}: {next(r['model'] for r in rows if r['domain'] == dom)}")
    lines += ["", "| target | images | C2ST↓ [95 % CI] | curve dev↓ |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['set']} | {r['c2st']:.2f} [{r['lo']:.2f}, "
                     f"{r['hi']:.2f}] | {r['curve_dev']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/pretrain/data")
    p.add_argument("--doc", action="store_true", help="write the block(s) into docs/distill.md")
    p.add_argument("--student", action="append", default=[], metavar="NAME=RUN[@SCALE]",
                   help="a student whose residual to decompose (repeatable)")
    p.add_argument("--no-model", action="store_true", help="skip the noise model's table")
    p.add_argument("--precision", action="store_true",
                   help="the students in fp32 vs bf16 (instead of the residual decomposition)")
    p.add_argument("--oracle", action="store_true",
                   help="the supervised oracle's bound and the teacher's SDE decode (paired; "
                        "a diagnostic, never shipped)")
    p.add_argument("--unpaired-dose", action="store_true",
                   help="the dose pair's mean estimated from the target domain's images and the "
                        "two fitted noise models only (Noisier2Noise; a diagnostic)")
    p.add_argument("--teacher", default="pretrained/demo128",
                   help="the teacher run whose SDE decode --oracle scores ('' to skip)")
    p.add_argument("--oracle-steps", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", default=RESIDUAL,
                   help="the docs/distill.md block the --student table goes to (another "
                        "than texture-residual adds PSNR and noise columns)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    students = dict(s.split("=", 1) for s in a.student)
    rows = None if a.no_model else score(a.data)
    res = residuals(a.data, students) if students and not a.precision else None
    prec = precision(a.data, students) if students and a.precision else None
    orc = oracle(a.data, a.teacher or None, a.oracle_steps) if a.oracle else None
    unp = unpaired_dose(a.data, a.oracle_steps) if a.unpaired_dose else None
    if a.doc:
        sys.path.insert(0, str(ROOT / "scripts"))
        from _blocks import fill_block

        if rows is not None:
            fill_block(ROOT / "docs" / "distill.md", "texture-model", block(rows, a.data),
                       required=True)
        if prec is not None:
            fill_block(ROOT / "docs" / "distill.md", "texture-precision",
                       precision_block(prec, students, a.data), required=True)
        common = f"--threads {a.threads} --oracle-steps {a.oracle_steps}"
        if orc is not None:
            t = f" --teacher {a.teacher}" if a.teacher else ""
            fill_block(ROOT / "docs" / "distill.md", "texture-oracle",
                       estimator_block(orc, f"--no-model --oracle{t} {common}", a.data,
                                       ORACLE_ABOUT), required=True)
        if unp is not None:
            fill_block(ROOT / "docs" / "distill.md", "texture-unpaired",
                       estimator_block(unp, f"--no-model --unpaired-dose {common}", a.data,
                                       UNPAIRED_ABOUT), required=True)
        if res is not None:
            fill_block(ROOT / "docs" / "distill.md", a.block,
                       residual_block(res, students, a.data, a.block), required=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
