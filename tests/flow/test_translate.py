"""Translation: tau = 1 is the identity; encode then decode with the same label inverts."""

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.flow import decode, encode
from medshift_fast.flow import sample as flow_sample
from medshift_fast.flow import sdedit as flow_sdedit
from medshift_fast.flow import translate as flow_translate

# flow functions take every setting explicitly (the defaults live in TranslationSettings)
_OLD = dict(tau=0.6, steps=20, solver="heun")


def translate(model, x, source, target, **kw):
    return flow_translate(model, x, source, target,
                          **{**_OLD, "guidance_encode": 2.0, "guidance_decode": 2.0, **kw})


def sdedit(model, x, target, **kw):
    return flow_sdedit(model, x, target, **{**_OLD, "guidance": 2.0, **kw})


def sample(model, target, n, shape, **kw):
    return flow_sample(model, target, n, shape, **{"guidance": 2.0, "steps": 20,
                                                   "solver": "heun", **kw})


from medshift_fast.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(
        "tiny",
        num_classes=3,
        in_channels=1,
        model_channels=16,
        channel_mult=(1, 2),
        attention_ds=(2,),
        head_channels=16,
    )
    # give the zero-initialised output layers some weight so the field is not trivially 0
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.02)
    return m.eval().double()


def test_tau_one_returns_input(model):
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    y = translate(model, x, 0, 1, tau=1.0, steps=5)
    assert torch.equal(y, x)


@pytest.mark.parametrize("solver", ["rk4", "heun"])
def test_encode_decode_same_label_inverts(model, solver):
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    z = encode(model, x, 1, tau=0.3, guidance=2.0, steps=40, solver=solver)
    assert (z - x).abs().max() > 1e-3  # the field is non-trivial
    xr = decode(model, z, 1, tau=0.3, guidance=2.0, steps=40, solver=solver)
    tol = 1e-5 if solver == "rk4" else 1e-4
    assert float((xr - x).abs().max()) < tol


def test_translate_shapes_labels_and_batched_labels(model):
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    y1 = translate(model, x, 0, 2, tau=0.5, steps=3, solver="euler")
    y2 = translate(
        model, x, torch.tensor([0, 0, 0]), torch.tensor([2, 2, 2]), tau=0.5, steps=3, solver="euler"
    )
    assert y1.shape == x.shape
    torch.testing.assert_close(y1, y2)
    # different target labels give different outputs
    y3 = translate(model, x, 0, 1, tau=0.5, steps=3, solver="euler")
    assert (y3 - y1).abs().max() > 0


def test_guidance_is_one_batched_forward(model):
    calls = []
    h = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    translate(
        model, x, 0, 1, tau=0.5, steps=2, solver="euler", guidance_encode=2.0, guidance_decode=1.0
    )
    h.remove()
    assert calls == [6, 6, 3, 3]  # encode guided (2B), decode with w = 1 (B)


def test_bad_inputs(model):
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(MedShiftError):
        translate(model, x, 0, 7, tau=0.5, steps=2)
    with pytest.raises(MedShiftError):
        translate(model, x, 0, 1, tau=1.5, steps=2)
    with pytest.raises(MedShiftError):
        translate(model, torch.zeros(1, 2, 8, 8, dtype=torch.float64), 0, 1, steps=2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MedShiftError):
        translate(model, bad, 0, 1, steps=2)


def test_sample_and_sdedit_shapes(model):
    g = torch.Generator().manual_seed(0)
    s = sample(model.float(), 1, 2, (1, 8, 8), steps=2, solver="euler", generator=g)
    assert s.shape == (2, 1, 8, 8) and torch.isfinite(s).all()
    e = sdedit(model, torch.zeros(2, 1, 8, 8), 2, tau=0.5, steps=2, solver="euler", generator=g)
    assert e.shape == (2, 1, 8, 8)
    model.double()


@pytest.mark.parametrize("noise", [1.0, 4.0])
def test_sde_decode_keeps_the_marginals_of_a_gaussian(noise):
    """Data N(m, s^2), path x_t = t x1 + (1 - t) x0: the exact velocity is linear in x; the SDE
    started from samples of p_tau must end at N(m, s^2), like the ODE, and forget its start."""
    from medshift_fast.flow import integrate_sde

    m, s, tau = 0.7, 0.3, 0.3

    def field(x, t):
        var = t * t * s * s + (1 - t) ** 2
        ex1 = m + t * s * s / var * (x - t * m)
        return (ex1 - x) / (1 - t), None

    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x1 = m + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = tau * x1 + (1 - tau) * x0
    out = integrate_sde(field, xt, tau, 1.0, steps=200, noise=noise, generator=g)
    assert abs(float(out.mean()) - m) < 0.01
    assert abs(float(out.std()) - s) < 0.01
    ode = integrate_sde(field, xt, tau, 1.0, steps=200, noise=0.0)
    c_sde = float(torch.corrcoef(torch.cat([xt, out], 1).T)[0, 1])
    c_ode = float(torch.corrcoef(torch.cat([xt, ode], 1).T)[0, 1])
    assert c_sde < c_ode - 0.01 and c_ode > 0.99  # the ODE is a bijection; the SDE forgets


def test_sde_translation_zero_noise_is_euler_and_is_seeded(model):
    from medshift_fast.translate import Translator

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    kw = dict(tau=0.4, steps=4, solver="euler")
    ode = Translator(model, 0, 1, **kw).translate(x)
    torch.testing.assert_close(Translator(model, 0, 1, decode="sde", sde_noise=0.0,
                                          **kw).translate(x), ode)
    a = Translator(model, 0, 1, decode="sde", sde_noise=1.0, seed=5, **kw).translate(x)
    b = Translator(model, 0, 1, decode="sde", sde_noise=1.0, seed=5, **kw).translate(x)
    assert torch.equal(a, b) and (a - ode).abs().max() > 1e-3
    with pytest.raises(MedShiftError):
        Translator(model, 0, 1, decode="sde", sde_noise=-1.0)
