"""The detector noise model (models/texture.py) and a student that carries it: the fit recovers
a known correlation and noise-vs-signal curve, white noise reads as white, the amplitude is the
piecewise-linear curve it states, bad inputs are refused; a texture student's output is its
noise-free translation plus exactly the model's noise, reproducible per seed, tiled exactly,
and exports to ONNX with the noise map as an input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.models.lean import LeanConfig
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.models.texture import DetectorNoise, _blur, gaussian_kernel1d
from medshift_fast.run import LoadedRun
from medshift_fast.translate import Translator


def _field(n=6, size=96, seed=0):
    """Smooth 'anatomy': a few wide Gaussian blobs and a ramp, in about [-0.7, 0.7]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(3, 2, generator=g) * 1.6 - 0.8
        f = 0.3 * xx * float(torch.rand(1, generator=g))
        for cy, cx in c:
            f = f + 0.4 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.3)
        out.append(f - 0.3)
    return torch.stack(out)[:, None].double()


def _noisy(clean, sigma, amp_fn, seed=1):
    n = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    k = _blur(n, sigma)
    k = k / float(k.std())  # unit std field: its 2nd-difference std is below 1 when correlated
    return clean + amp_fn(clean) * k


@pytest.mark.parametrize("sigma", [0.5, 0.8])
def test_fit_recovers_the_correlation_and_the_curve(sigma):
    clean = _field(n=16)

    def amp(c):
        return 0.01 + 0.02 * (c + 0.5).clamp(0, None)

    m = DetectorNoise.fit(_noisy(clean, sigma, amp).float())
    assert abs(m.sigma - sigma) <= 0.05
    # the model's noise reproduces the residual std it measured: draw it on the clean field
    x = clean.float()
    y = x + m.noise(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))
    ref = DetectorNoise.fit(_noisy(clean, sigma, amp, seed=2).float())
    got = DetectorNoise.fit(y)
    k = np.asarray(ref.knots)
    r_ref = np.interp(k, ref.knots, ref.residual_std)
    r_got = np.interp(k, got.knots, got.residual_std)
    dev = np.abs(r_got / r_ref - 1)  # two finite samples: a few per cent per bin
    assert dev.mean() < 0.06 and dev.max() < 0.2
    assert abs(got.sigma - sigma) <= 0.05


def test_top_up_adds_only_the_missing_variance():
    clean = _field()

    def amp(c):
        return 0.01 + 0.02 * (c + 0.5).clamp(0, None)

    m = DetectorNoise.fit(_noisy(clean, 0.5, amp).float())
    full = m.top_up(clean.float())  # noise-free translations: the whole model is added
    assert np.allclose(full.amp, m.amp, rtol=0.02) and max(full.own_std) < 0.1 * min(m.amp)
    half = m.top_up(_noisy(clean, 0.5, lambda c: amp(c) / 2, seed=7).float())
    assert np.allclose(np.asarray(half.amp) / np.asarray(m.amp), np.sqrt(0.75), rtol=0.1)
    none = m.top_up(_noisy(clean, 0.5, lambda c: amp(c) * 1.5, seed=8).float())
    assert max(none.amp) == 0.0  # too noisy already: nothing added, nothing taken away
    assert DetectorNoise.from_dict(half.to_dict()) == half


def test_white_noise_reads_as_white():
    x = _field() + 0.02 * torch.randn(6, 1, 96, 96, generator=torch.Generator().manual_seed(3),
                                      dtype=torch.float64)
    m = DetectorNoise.fit(x.float())
    assert m.sigma <= 0.15 and m.radius <= 1
    assert np.allclose(m.amp, 0.02, rtol=0.15)


def test_amplitude_is_the_piecewise_linear_curve():
    m = DetectorNoise(0.5, (-0.5, 0.0, 0.25), (0.01, 0.03, 0.02))
    c = torch.linspace(-1, 1, 101)
    want = np.interp(c.numpy(), m.knots, m.amp)
    assert np.allclose(m.amplitude(c).numpy(), want, atol=1e-7)
    assert DetectorNoise.from_dict(m.to_dict()) == m
    assert gaussian_kernel1d(0.5).numel() == 5 and m.radius == 2


def test_measured_std_is_the_fitted_curve_and_needs_one():
    m = DetectorNoise(0.5, (-0.5, 0.0, 0.25), (0.01, 0.03, 0.02), (0.004, 0.012, 0.008))
    c = torch.linspace(-1, 1, 101)
    assert np.allclose(m.measured_std(c).numpy(), np.interp(c.numpy(), m.knots,
                                                            m.residual_std), atol=1e-7)
    with pytest.raises(MedShiftError, match="no measured residual std"):
        DetectorNoise(0.5, (0.0,), (0.01,)).measured_std(c)


@pytest.mark.parametrize("bad", [
    dict(sigma=-1, knots=(0.0,), amp=(0.1,)),
    dict(sigma=0.5, knots=(0.0, 0.0), amp=(0.1, 0.2)),
    dict(sigma=0.5, knots=(0.0, 1.0), amp=(0.1,)),
    dict(sigma=0.5, knots=(0.0,), amp=(float("nan"),)),
    dict(sigma=0.5, knots=(0.0,), amp=(-0.1,)),
])
def test_bad_models_are_refused(bad):
    with pytest.raises(MedShiftError, match="refit"):
        DetectorNoise(**bad)
    with pytest.raises(MedShiftError, match="refit"):
        DetectorNoise.from_dict({"sigma": 0.5})


def test_bad_fit_inputs_are_refused():
    with pytest.raises(MedShiftError, match=r"\(N, 1, H, W\)"):
        DetectorNoise.fit(torch.zeros(2, 3, 32, 32))
    with pytest.raises(MedShiftError, match="too small"):
        DetectorNoise.fit(torch.zeros(2, 1, 4, 4))
    x = torch.zeros(2, 1, 32, 32)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(MedShiftError, match="NaN"):
        DetectorNoise.fit(x)
    with pytest.raises(MedShiftError, match="unclipped"):
        DetectorNoise.fit(torch.ones(2, 1, 32, 32))


# ------------------------------------------------------------------------- a texture student
MODEL = DetectorNoise(0.5, (-0.8, 0.0, 0.8), (0.01, 0.03, 0.05))


def _run(texture=True) -> LoadedRun:
    st = Student(StudentConfig(arch="lean", pairs=((0, 1),), lean=LeanConfig(
        num_classes=2, widths=(8, 16), blocks=(1, 1), noise_channels=0).to_dict(),
        texture={"1": MODEL.to_dict()} if texture else {}))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in st.parameters():
            p.normal_(0, 0.05)
    return LoadedRun.from_model(st.eval(), ("a", "b"), image_size=32)


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _images(n=2, size=48, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 1.2 - 0.6


def test_texture_student_adds_exactly_the_models_noise():
    run = _run()
    st = run.model
    assert st.stochastic and st.noise_channels == 1 and st.net_noise == 0
    assert st.halo == st.net.halo  # the kernel's radius (2) is inside the network's halo
    x = _images()
    tr = Translator(run, "a", "b", tile=None, engine="eager")
    clean = Translator(run, "a", "b", tile=None, noise_scale=0.0, engine="eager").translate(x)
    det = Translator(_run(texture=False), "a", "b", tile=None, engine="eager").translate(x)
    assert torch.equal(clean, det)  # noise scale 0: the network's noise-free translation
    y = tr.translate(x, generators=_gens(1, 2))
    assert torch.equal(y, tr.translate(x, generators=_gens(1, 2)))
    assert (y - tr.translate(x, generators=_gens(3, 4))).abs().max() > 1e-3
    from medshift_fast.flow.solvers import PerSampleGenerators

    n = st.draw_noise(tuple(x.shape), PerSampleGenerators(_gens(1, 2)))
    want = (clean + MODEL.noise(clean, n)).clamp(-1, 1)
    assert torch.allclose(y, want, atol=1e-6)
    half = Translator(run, "a", "b", tile=None, noise_scale=0.5, engine="eager").translate(
        x, generators=_gens(1, 2))
    assert torch.allclose(half, (clean + 0.5 * MODEL.noise(clean, n)).clamp(-1, 1), atol=1e-6)


def test_texture_only_for_its_target_and_tiles_are_exact():
    st = _run().model
    x = _images(1, size=96)
    n = torch.randn(1, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    ys = torch.zeros(1).long()
    assert torch.equal(st.texture_noise(x, n, ys), torch.zeros_like(x))  # no model for label 0
    run = _run()
    whole = Translator(run, "a", "b", tile=None, engine="eager").translate(x, generators=_gens(3))
    tr = Translator(run, "a", "b", tile=64, overlap=2 * run.model.halo + 2, engine="eager")
    tiled = tr.translate(x, generators=_gens(3))
    assert tr.last_plan.n_tiles > 1
    assert (tiled - whole).abs().max() < 1e-5


def test_texture_refused_for_a_two_call_student():
    with pytest.raises(MedShiftError, match="one-call"):
        StudentConfig(method="meanflow", unet={"x": 1}, texture={"1": MODEL.to_dict()})


def test_export_of_a_texture_student(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from medshift_fast.export.graphs import ExportSettings
    from medshift_fast.export.onnx_export import export_onnx
    from medshift_fast.flow.solvers import PerSampleGenerators

    run = _run()
    x = _images(2, size=32)
    tr = Translator(run, "a", "b", engine="eager")
    export_onnx(run.model, ExportSettings.from_translator(tr, size=32), tmp_path / "t.onnx")
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "noise"]
    n = run.model.draw_noise(tuple(x.shape), PerSampleGenerators(_gens(3, 4)))
    got = sess.run(None, {"image": x.numpy(), "noise": n.numpy()})[0]
    assert abs(got - tr.translate(x, generators=_gens(3, 4)).numpy()).max() < 1e-4


def test_texture_is_off_far_from_the_learned_scale_unless_asked_for():
    """A grid more than 2x the learned 32-px scale gets the noise-free translation (the noise
    was fitted at the learned scale); an explicit noise_scale keeps the texture."""
    run = _run()
    x = _images(1, size=96)
    auto = Translator(run, "a", "b", tile=None, engine="eager")
    assert auto.texture_off(96, 96) and not auto.texture_off(40, 40)
    clean = Translator(run, "a", "b", tile=None, noise_scale=0.0, engine="eager").translate(x)
    assert torch.equal(auto.translate(x, generators=_gens(2)), clean)
    asked = Translator(run, "a", "b", tile=None, noise_scale=1.0, engine="eager")
    assert not asked.texture_off(96, 96)
    assert (asked.translate(x, generators=_gens(2)) - clean).abs().max() > 1e-3
    small = _images(1, size=40)  # within 2x: the texture is on
    assert (auto.translate(small, generators=_gens(2))
            - Translator(run, "a", "b", tile=None, noise_scale=0.0,
                         engine="eager").translate(small)).abs().max() > 1e-3
