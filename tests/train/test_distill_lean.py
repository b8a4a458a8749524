"""medshift distill --arch lean: a lean student re-distilled from a one-call run (regression onto
its translations on the fly), a stochastic lean student trained adversarially that resumes bit
for bit (its noise maps included), a stochastic start from a deterministic lean run, and the
config's refusals."""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.models import build_model
from medshift_fast.run import load_run, save_run
from medshift_fast.train import TrainConfig, TrainingInterrupted
from medshift_fast.train.adversarial import AdversarialTask
from medshift_fast.train.distill import DistillConfig, distill
from medshift_fast.train.trainer import run_training
from medshift_fast.translate import Translator

PAIR = "synthetic_low:real_normal"
LEAN = dict(arch="lean", lean_widths=(8, 16), lean_blocks=(1, 1))


@pytest.fixture(scope="module")
def teacher(tiny_folder, tmp_path_factory):
    d = tmp_path_factory.mktemp("lean_teacher")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    save_run(d, TrainConfig(data=str(tiny_folder), image_size=16), m.config,
             ("synthetic_low", "real_normal"), m.state_dict())
    return d


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), pairs=PAIR, steps=6, batch_size=4,
                lr=2e-3, warmup_frac=0.0, solver_steps=1, val_every=0, val_images=2,
                log_every=1, ckpt_every=100, seed=3, ema_decay=0.5, taus_per_image=1,
                disc_channels=8, disc_scales=2, disc_lr=1e-3)
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def anchor(teacher, tmp_path_factory):
    """A U-Net regression student whose output layer is random: a map far from the identity."""
    out = distill(_cfg(teacher, tmp_path_factory.mktemp("anchor") / "st", method="oneshot",
                       steps=1, lr=1e-12), progress=False)
    run = load_run(out)
    torch.manual_seed(1)
    sd = {k: v.clone() for k, v in run.model.state_dict().items()}
    for k in ("unet.out.2.weight", "unet.out.2.bias"):
        sd[k].normal_(0, 0.05)
    save_run(out, run.train, run.model.config.to_dict(), run.domains, sd, kind="student",
             extra={"learned": run.config.get("learned")})
    return out


def test_lean_regression_onto_a_one_call_run(teacher, anchor, tmp_path):
    out = distill(_cfg(teacher, tmp_path / "lean", method="oneshot", anchor_run=str(anchor),
                       steps=80, lr=3e-3, val_every=40, **LEAN), progress=False)
    run = load_run(out)
    assert run.model.config.arch == "lean" and not run.model.stochastic
    from conftest import make_images

    x = make_images(4, seed=21)[0]
    y_a = Translator(load_run(anchor), "synthetic_low", "real_normal", tau=0.45).translate(x)
    y_l = Translator(run, "synthetic_low", "real_normal", tau=0.45).translate(x)
    ident, err = float(((x - y_a) ** 2).mean()), float(((y_l - y_a) ** 2).mean())
    assert ident > 1e-4 and err < 0.5 * ident, (err, ident)
    vals = [r.split(",")[5] for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert sum(bool(v) for v in vals) == 2  # validated against the anchor, not the teacher
    assert not (out / "teacher_cache.safetensors").exists()


def test_stochastic_lean_adversarial_resumes_exactly(teacher, anchor, tmp_path):
    kw = dict(anchor_run=str(anchor), noise_channels=1, **LEAN)
    full, part = [], []
    cfg_a = _cfg(teacher, tmp_path / "a", **kw)
    run_training(cfg_a, AdversarialTask(cfg_a), False, lambda tr, m: full.append(m["loss"]))

    def interrupt(tr, m):
        part.append(m["loss"])
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg_b = _cfg(teacher, tmp_path / "b", **kw)
    with pytest.raises(TrainingInterrupted):
        run_training(cfg_b, AdversarialTask(cfg_b), False, interrupt)
    cfg_r = _cfg(teacher, tmp_path / "b", resume="last", **kw)
    run_training(cfg_r, AdversarialTask(cfg_r), False, lambda tr, m: part.append(m["loss"]))
    assert part == full and len(full) == 6
    a, b = load_run(tmp_path / "a").model, load_run(tmp_path / "b").model
    assert a.stochastic and all(torch.equal(p, q) for p, q in
                                zip(a.state_dict().values(), b.state_dict().values()))
    # the noise input was trained: its stem weights moved away from their initial values
    assert float(a.net.stem.weight[:, 4:].abs().sum()) > 0


def test_stochastic_start_from_a_deterministic_lean_run(teacher, anchor, tmp_path):
    det = distill(_cfg(teacher, tmp_path / "det", method="oneshot", anchor_run=str(anchor),
                       steps=2, **LEAN), progress=False)
    sto = distill(_cfg(teacher, tmp_path / "sto", method="adversarial", init=str(det),
                       anchor_run=str(anchor), noise_channels=1, steps=1, lr=1e-12,
                       disc_whiten=True, **LEAN),  # whitened without a texture model too
                  progress=False)
    d, s = load_run(det).model, load_run(sto).model
    assert s.stochastic and torch.all(s.net.stem.weight[:, 4:].abs() < 1e-9)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    t, ys, yt = 0.5, torch.zeros(2).long(), torch.ones(2).long()
    n = s.draw_noise(x.shape, torch.Generator().manual_seed(0))
    assert torch.allclose(s.translate(x, t, ys, yt, n), d.translate(x, t, ys, yt), atol=1e-5)
    with pytest.raises(MedShiftError, match="network differs"):
        distill(_cfg(teacher, tmp_path / "bad", init=str(det), arch="lean",
                     lean_widths=(8, 8), lean_blocks=(1, 1)), progress=False)


def test_lean_config_refusals(teacher, tmp_path, capsys):
    with pytest.raises(MedShiftError, match="needs --arch lean"):
        _cfg(teacher, tmp_path / "x", noise_channels=1)
    with pytest.raises(MedShiftError, match="one-call student"):
        _cfg(teacher, tmp_path / "x", method="meanflow", **LEAN)
    with pytest.raises(MedShiftError, match="one count >= 0 per level"):
        _cfg(teacher, tmp_path / "x", arch="lean", lean_widths=(8, 16), lean_blocks=(1,))
    with pytest.raises(MedShiftError, match="noise_scale must be >= 0"):
        _cfg(teacher, tmp_path / "x", noise_scale=-0.5, **LEAN)
    rc = main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "c"),
               "--arch", "lean", "--lean-kernel", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "kernel must be odd" in err[0]


def test_anchor_cache_holds_the_anchor_runs_translations(teacher, anchor, tmp_path):
    out = distill(_cfg(teacher, tmp_path / "c", method="oneshot", anchor_run=str(anchor),
                       anchor_cache=True, taus_per_image=2, steps=2, **LEAN), progress=False)
    from medshift_fast.fileio import load_safetensors

    cache, meta = load_safetensors(out / "teacher_cache.safetensors")
    assert "anchor_weights_sha256" in meta
    a = load_run(anchor).model
    k = 3
    want = a.translate(cache["x"][k:k + 1], float(cache["tau"][k]), cache["s"][k:k + 1],
                       cache["g"][k:k + 1])
    assert torch.allclose(cache["t"][k:k + 1], want, atol=1e-5)
    n = cache["x"].shape[0]  # every training image twice (taus_per_image), at two taus
    assert torch.unique(cache["x"].flatten(1), dim=0).shape[0] * 2 == n
    assert torch.unique(cache["tau"]).numel() == n
    with pytest.raises(MedShiftError, match="needs --anchor-run"):
        _cfg(teacher, tmp_path / "x", anchor_cache=True)


def test_diversity_term_makes_the_texture_depend_on_the_noise(teacher, anchor, tmp_path):
    """With the mode-seeking term the two noise draws' translations drift apart (the term
    falls); without it the run is the plain adversarial one; a deterministic student refuses
    it."""
    import csv

    kw = dict(method="adversarial", anchor_run=str(anchor), noise_channels=1, steps=12,
              log_every=1, lr=3e-3, **LEAN)
    out = distill(_cfg(teacher, tmp_path / "div", diversity_weight=1.0, **kw), progress=False)
    rows = list(csv.DictReader((out / "adversarial.csv").open()))
    div = [float(r["diversity"]) for r in rows]
    assert div[-1] < div[0] and all(d > 0 for d in div)
    plain = distill(_cfg(teacher, tmp_path / "plain", **kw), progress=False)
    rows = list(csv.DictReader((plain / "adversarial.csv").open()))
    assert all(float(r["diversity"]) == 0 for r in rows)
    with pytest.raises(MedShiftError, match="needs a stochastic student"):
        _cfg(teacher, tmp_path / "x", method="adversarial", diversity_weight=1.0, **LEAN)
    with pytest.raises(MedShiftError, match="adversarial"):
        _cfg(teacher, tmp_path / "x", diversity_weight=1.0, noise_channels=1, **LEAN)


def test_detector_texture_is_fitted_and_judged_with_the_noise(teacher, anchor, tmp_path):
    """--texture detector: a noise model per target domain, fitted to its real training images,
    lands in the student's config; the student is stochastic through it (one noise map), its
    noise-0 member is the network alone, and the config refuses it outside adversarial."""
    from medshift_fast.models.texture import DetectorNoise

    out = distill(_cfg(teacher, tmp_path / "tex", method="adversarial", anchor_run=str(anchor),
                       texture="detector", noise_channels=0, steps=2, consistency_weight=0.5,
                       denoise_weight=1.0, disc_whiten=True, texture_top_up=True,
                       dose_weight=10.0, dose_pairs=PAIR, **LEAN),
                  progress=False)
    st = load_run(out).model
    rows = list(csv.DictReader((out / "adversarial.csv").open()))
    assert all(float(r["consistency"]) > 0 for r in rows)  # the source-noise term ran
    assert all(float(r["denoise"]) > 0 for r in rows)  # and the recorrupted-to-recorrupted one
    # and the dose pair's Noisier2Noise one (0 at step 1: the fresh student is the identity
    # and this synthetic source is quieter than the target, so nothing is added to y)
    assert float(rows[0]["dose"]) == 0 and float(rows[-1]["dose"]) > 0
    assert set(st.config.texture) == {"1"} and st.stochastic and st.net_noise == 0
    assert isinstance(st.textures[1], DetectorNoise)
    # saved topped up: the student's own residual noise was measured per knot
    assert len(st.textures[1].own_std) == len(st.textures[1].knots)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    ys, yt = torch.zeros(2).long(), torch.ones(2).long()
    n = st.draw_noise(x.shape, torch.Generator().manual_seed(0))
    clean = st.translate(x, 0.5, ys, yt)
    assert torch.allclose(st.translate(x, 0.5, ys, yt, n),
                          clean + st.texture_noise(clean, n[:, -1:], yt), atol=1e-6)
    with pytest.raises(MedShiftError, match="needs --method adversarial"):
        _cfg(teacher, tmp_path / "x", method="oneshot", texture="detector", **LEAN)
    with pytest.raises(MedShiftError, match="consistency-weight applies"):
        _cfg(teacher, tmp_path / "x", method="oneshot", consistency_weight=1.0, **LEAN)
    with pytest.raises(MedShiftError, match="denoise-weight applies"):
        _cfg(teacher, tmp_path / "x", method="oneshot", denoise_weight=1.0, **LEAN)
    with pytest.raises(MedShiftError, match="texture-top-up needs"):
        _cfg(teacher, tmp_path / "x", method="adversarial", texture_top_up=True, **LEAN)
    with pytest.raises(MedShiftError, match="disc-whiten applies"):
        _cfg(teacher, tmp_path / "x", method="oneshot", disc_whiten=True, **LEAN)
    with pytest.raises(MedShiftError, match="denoise_alpha"):
        _cfg(teacher, tmp_path / "x", method="adversarial", denoise_alpha=0.0, **LEAN)
    with pytest.raises(MedShiftError, match="texture must be one of"):
        _cfg(teacher, tmp_path / "x", method="adversarial", texture="film", **LEAN)
    with pytest.raises(MedShiftError, match="dose-weight and --dose-pairs go together"):
        _cfg(teacher, tmp_path / "x", method="adversarial", dose_weight=1.0, **LEAN)
    with pytest.raises(MedShiftError, match="dose-weight applies"):
        _cfg(teacher, tmp_path / "x", method="oneshot", dose_weight=1.0, dose_pairs=PAIR, **LEAN)
    a, b = PAIR.split(":")
    with pytest.raises(MedShiftError, match="which the student does not learn"):  # before work
        distill(_cfg(teacher, tmp_path / "x", method="adversarial", dose_weight=1.0,
                     dose_pairs=f"{b}:{a}", **LEAN), progress=False)
    with pytest.raises(MedShiftError, match="unknown domain 'film'"):
        distill(_cfg(teacher, tmp_path / "x", method="adversarial", dose_weight=1.0,
                     dose_pairs="film:real_normal", **LEAN), progress=False)
    assert not (tmp_path / "x").exists()


def test_dose_gap_noise_brings_the_target_to_the_source_noise_level():
    """--dose-weight's input: real target images plus dose_gap_noise carry the source dose's
    noise variance (closed form: a_src^2 = a_tgt^2 + gap^2 with the shared correlation), zero
    where the target is the noisier, and none of it is mean (the term's minimiser is the
    posterior mean of the target image)."""
    from medshift_fast.models.texture import DetectorNoise
    from medshift_fast.train.noise_terms import dose_gap_noise

    knots = (-0.5, 0.5)
    tgt = DetectorNoise(0.7, knots, (0.01, 0.03), (0.01, 0.03))
    src = DetectorNoise(0.7, knots, (0.02, 0.05), (0.02, 0.05))
    g = torch.Generator().manual_seed(0)
    level = torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1).expand(2, 1, 128, 128)
    y = level + tgt.noise(level, torch.randn(2, 1, 128, 128, generator=g))
    m = dose_gap_noise(src, tgt, y, torch.randn(2, 1, 128, 128, generator=g))
    gain = float(tgt.correlate(torch.randn(1, 1, 512, 512, generator=g))[..., 8:-8, 8:-8].std())
    inner = (..., slice(8, -8), slice(8, -8))
    for k, (a_s, a_t) in enumerate([(0.02, 0.01), (0.05, 0.03)]):
        want_gap = (a_s ** 2 - a_t ** 2) ** 0.5 * gain
        assert abs(float(m[k][inner].std()) / want_gap - 1) < 0.08
        assert abs(float((y + m - level)[k][inner].std()) / (a_s * gain) - 1) < 0.08
        assert abs(float(m[k][inner].mean())) < 0.1 * want_gap
    # where the target is the noisier (swap the models) nothing is added
    assert float(dose_gap_noise(tgt, src, y, torch.randn(2, 1, 128, 128, generator=g))
                 .abs().max()) == 0.0


def test_whitened_discriminator_sees_the_residual_in_units_of_the_grain():
    """--disc-whiten: the residual weight is the target model's median measured std over its
    std at the image's local signal (1.5-px low-pass), for that target's images only."""
    from medshift_fast.models.discriminator import lowpass
    from medshift_fast.models.texture import SIGNAL_SIGMA, DetectorNoise
    from medshift_fast.train.noise_terms import whitening_weight

    model = DetectorNoise(0.5, (-0.5, 0.5), (0.01, 0.04), (0.005, 0.02))
    img = torch.linspace(-1, 1, 2 * 16 * 16).view(2, 1, 16, 16)
    y = torch.tensor([1, 0])
    w = whitening_weight({1: model}, img, y)
    want = 0.0125 / model.measured_std(lowpass(img, SIGNAL_SIGMA))
    assert torch.allclose(w[0], want[0]) and torch.equal(w[1], torch.ones_like(w[1]))
    assert float(w[0].max() / w[0].min()) > 2  # faint grain (dark) weighs more than strong
    assert whitening_weight({}, img, y) is None


def test_texture_top_up_adds_only_what_the_batch_lacks():
    """--texture-top-up: on a batch that already carries the target's noise the discriminator's
    texture adds (almost) nothing; on a noise-free batch it adds the full model's noise; a
    target absent from the batch gets none."""
    from medshift_fast.models.texture import DetectorNoise, _blur
    from medshift_fast.train.noise_terms import batch_texture

    g = torch.Generator().manual_seed(0)
    anatomy = _blur(torch.rand(8, 1, 64, 64, generator=g).double(), 4.0).float() * 2 - 1
    model = DetectorNoise(0.5, (-1.0, 1.0), (0.02, 0.02))
    noisy = anatomy + model.noise(anatomy, torch.randn(anatomy.shape, generator=g))
    model = DetectorNoise.fit(noisy)  # the target's fitted model (residual std recorded)
    n = torch.randn(8, 1, 64, 64, generator=g)
    yt = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    full = model.noise(anatomy, n)
    for clean, lo, hi in ((anatomy, 0.9, 1.1), (noisy, 0.0, 0.35)):
        added = batch_texture({"1": model.to_dict()}, clean, n, yt, lambda z: z.float())
        assert torch.equal(added[6:], torch.zeros_like(added[6:]))  # not this target
        ratio = float(added[:6].std() / full[:6].std())
        assert lo <= ratio <= hi, ratio
