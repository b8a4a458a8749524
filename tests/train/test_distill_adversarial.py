"""medshift distill --method adversarial: the discriminator pulls the student's outputs toward the
target domain's noise power spectrum, resume is exact (discriminator included), the weights are
safetensors, and bad requests are refused."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.eval.physics import noise_power_spectrum, nps_distance
from medshift_fast.models import build_model
from medshift_fast.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from medshift_fast.run import load_run, save_run
from medshift_fast.train import TrainConfig, TrainingInterrupted
from medshift_fast.train.adversarial import DISC_WEIGHTS, AdversarialTask, lowpass
from medshift_fast.train.distill import DistillConfig, distill
from medshift_fast.train.trainer import run_training
from medshift_fast.translate import Translator

PAIR = "synthetic_low:real_normal"


@pytest.fixture(scope="module")
def teacher(tiny_folder, tmp_path_factory):
    """A small random teacher over the tiny folder: synthetic_low is smooth, real_normal carries
    white noise of std 0.1 (conftest.tiny_folder)."""
    d = tmp_path_factory.mktemp("adv_teacher")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    save_run(d, TrainConfig(data=str(tiny_folder), image_size=16), m.config,
             ("synthetic_low", "real_normal"), m.state_dict())
    return d


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), pairs=PAIR, method="adversarial", steps=6,
                batch_size=4, lr=2e-3, warmup_frac=0.0, solver_steps=1, val_every=0,
                val_images=2, log_every=1, ckpt_every=100, seed=3, ema_decay=0.5,
                taus_per_image=1, disc_channels=8, disc_scales=2, disc_lr=1e-3)
    return DistillConfig(**{**base, **kw})


def _smooth(n=8, size=16, seed=11):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ph = torch.rand(n, generator=g)[:, None, None] * 6
    return (0.6 * torch.sin(3 * xx + ph) * torch.cos(2 * yy))[:, None].float()


def _target_nps(tiny_folder):
    from medshift_fast.data import FolderDataset

    ds = FolderDataset(tiny_folder, size=16, domains=("real_normal",))
    return noise_power_spectrum(torch.stack([ds[i][0] for i in range(len(ds))]))


def test_the_discriminator_moves_outputs_toward_the_targets_noise_spectrum(teacher, tmp_path,
                                                                           tiny_folder):
    """Sources are smooth, the target domain has a white noise grain: the adversarial term (no
    anchor, no structure term) makes the student, which starts as the identity, add a grain whose
    spectrum is closer to the target's than the smooth source's is."""
    ref, x = _target_nps(tiny_folder), _smooth()
    out = distill(_cfg(teacher, tmp_path / "adv", steps=80, anchor_weight=0.0,
                       structure_weight=0.0, adv_weight=1.0, lr=1e-2, ema_decay=0.0),
                  progress=False)
    st = Translator(load_run(out), "synthetic_low", "real_normal", tau=0.45)
    before, after = nps_distance(x, ref), nps_distance(st.translate(x), ref)
    assert after < before - 2.0, (before, after)  # dB (12 -> 6..10 over seeds 0-7)
    rows = (out / "adversarial.csv").read_text().splitlines()
    assert rows[0].startswith("step,adv,anchor,structure,d_loss") and len(rows) == 81


@pytest.fixture(scope="module")
def regression(teacher, tmp_path_factory):
    """A regression (oneshot) student of the teacher: --init / --anchor-run material."""
    out = tmp_path_factory.mktemp("reg") / "st"
    return distill(_cfg(teacher, out, method="oneshot", steps=3), progress=False)


@pytest.mark.parametrize("anchor", ["cache", "run"])
def test_adversarial_distillation_resumes_exactly(teacher, regression, tmp_path, anchor):
    """Interrupted at step 3 and resumed == uninterrupted, bit for bit (losses, student and
    discriminator weights), with the teacher cache or an anchor run."""
    full, part = [], []
    kw = dict(anchor_run=str(regression), init=str(regression)) if anchor == "run" else {}
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
    from safetensors.torch import load_file

    da, db = load_file(tmp_path / "a" / DISC_WEIGHTS), load_file(tmp_path / "b" / DISC_WEIGHTS)
    assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)
    ga, gb = load_file(tmp_path / "a" / "model.safetensors"), load_file(
        tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_a_oneshot_run_cannot_be_resumed_as_adversarial(teacher, tmp_path):
    distill(_cfg(teacher, tmp_path / "r", method="oneshot", steps=2), progress=False)
    with pytest.raises(MedShiftError, match="method"):
        distill(_cfg(teacher, tmp_path / "r", steps=4, resume="last"), progress=False)


def test_init_from_a_student_and_refusals(teacher, regression, tmp_path):
    reg = regression
    out = distill(_cfg(teacher, tmp_path / "adv", steps=1, init=str(reg), lr=1e-12,
                       warmup_frac=0.0), progress=False)
    a, b = load_run(reg).model.state_dict(), load_run(out).model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6  # started from it
    with pytest.raises(MedShiftError, match="not a one-call student"):
        distill(_cfg(teacher, tmp_path / "bad", init=str(teacher)), progress=False)
    with pytest.raises(MedShiftError, match="crops of at least"):
        distill(_cfg(teacher, tmp_path / "bad2", disc_scales=3, crop=8), progress=False)
    with pytest.raises(MedShiftError, match="weights and sigmas"):
        _cfg(teacher, tmp_path / "bad3", adv_weight=-1.0)
    with pytest.raises(MedShiftError, match="tau 0.3..0.6; this run needs"):
        distill(_cfg(teacher, tmp_path / "bad4", anchor_run=str(reg), tau_max=0.8),
                progress=False)


def test_discriminator_losses_and_conditioning():
    torch.manual_seed(0)
    d = PatchDiscriminator(3, channels=4, scales=2, depth=1)
    x = torch.randn(2, 1, 16, 16)
    out = d(x, torch.tensor([0, 2]))
    assert [o.shape for o in out] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    # the label changes the logits (projection), the hinge losses have their closed forms
    assert not torch.allclose(d(x, torch.tensor([1, 1]))[0], d(x, torch.tensor([2, 2]))[0])
    big, small = [torch.full((1, 1, 2, 2), 3.0)], [torch.full((1, 1, 2, 2), -3.0)]
    assert float(hinge_d_loss(big, small)) == 0.0
    assert float(hinge_d_loss(small, big)) == pytest.approx(8.0)
    assert float(hinge_g_loss(big)) == -3.0
    with pytest.raises(MedShiftError, match="at least"):
        d(torch.randn(1, 1, 2, 2), torch.tensor([0]))
    # a residual weight of one is no weight; another weight changes only through the residual
    # (eval: the spectral norm's power iteration stops updating between calls)
    d.eval()
    y = torch.tensor([0, 2])
    out = d(x, y)
    for a, b in zip(d(x, y), d(x, y, torch.ones(2, 1, 16, 16))):
        assert torch.equal(a, b)
    assert not torch.allclose(d(x, y, torch.full((2, 1, 16, 16), 3.0))[0], out[0])
    flat = torch.zeros(2, 1, 16, 16)  # no residual: the weight cannot matter
    assert torch.equal(d(flat, y)[0], d(flat, y, torch.full((2, 1, 16, 16), 3.0))[0])


def test_lowpass_keeps_constants_and_removes_fine_grain():
    c = torch.full((1, 2, 12, 12), 0.3)
    assert torch.allclose(lowpass(c, 1.5), c, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    n = torch.randn(1, 1, 32, 32, generator=g)
    assert float(lowpass(n, 2.0).std()) < 0.2 * float(n.std())
    assert lowpass(n, 0.0) is n


def test_map_slope_is_the_derivative_of_the_map():
    """The recorrupted-to-recorrupted target linearises the pair's intensity map: its slope
    must be the map's derivative inside the knots and 0 beyond them (constant there)."""
    from medshift_fast.train.intensity import apply_map, intensity_map, map_slope

    g = torch.Generator().manual_seed(3)
    qa, qb = intensity_map(torch.randn(4000, generator=g), torch.randn(4000, generator=g) ** 3)
    qa, qb = qa.double(), qb.double()  # exact finite differences
    x = torch.linspace(float(qa[0]) + 0.01, float(qa[-1]) - 0.01, 501, dtype=torch.float64)
    h = 1e-4
    fd = (apply_map(x + h, qa, qb) - apply_map(x - h, qa, qb)) / (2 * h)
    kinks = (torch.searchsorted(qa, x + h) != torch.searchsorted(qa, x - h))
    s = map_slope(x, qa, qb)
    assert torch.allclose(s[~kinks], fd[~kinks], rtol=1e-3, atol=1e-3)
    assert bool((s >= 0).all())  # monotone map
    out = torch.tensor([float(qa[0]) - 1.0, float(qa[-1]) + 1.0])
    assert torch.equal(map_slope(out.double(), qa, qb), torch.zeros(2, dtype=torch.float64))


def test_intensity_map_matches_distributions_and_is_identity_between_equal_ones():
    from medshift_fast.train.intensity import apply_map, intensity_map

    g = torch.Generator().manual_seed(0)
    a = torch.rand(20000, generator=g)  # U(0, 1)
    b = 0.5 * torch.rand(20000, generator=g) ** 2 - 0.8  # another distribution
    qa, qb = intensity_map(a, b)
    y = apply_map(a, qa, qb)
    q = torch.linspace(0.05, 0.95, 19)
    assert torch.allclose(torch.quantile(y, q), torch.quantile(b, q), atol=5e-3)
    assert bool((apply_map(torch.tensor([0.2, 0.3, 0.9]), qa, qb).diff() > 0).all())  # monotone
    qa2, qb2 = intensity_map(a, a.clone())
    x = torch.linspace(0.01, 0.99, 50)
    assert torch.allclose(apply_map(x, qa2, qb2), x, atol=1e-6)
