"""ODE solvers against an analytic linear ODE, both directions, with guidance in the field.

Field: v_cond = a x, v_uncond = b x  ->  k = (b + w (a - b)) x = lam x,
so x(t1) = x(t0) e^{lam (t1 - t0)}.
"""

import math

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.flow import integrate, time_grid

A, B, W = 1.3, -0.4, 2.0
LAM = B + W * (A - B)  # 2.9


def field(x, t):
    return A * x, B * x


def exact(x0, t0, t1):
    return x0 * math.exp(LAM * (t1 - t0))


def err(solver, steps, t0, t1):
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64).view(1, 1, 7, 1)
    x = integrate(field, x0, t0, t1, steps, solver, w=W)
    return float((x - exact(x0, t0, t1)).abs().max())


@pytest.mark.parametrize("t0,t1", [(0.6, 1.0), (1.0, 0.6), (0.0, 1.0), (1.0, 0.3)])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_order_of_convergence(solver, order, t0, t1):
    e1, e2 = err(solver, 8, t0, t1), err(solver, 16, t0, t1)
    ratio = e1 / e2
    assert 2**order * 0.75 < ratio < 2**order * 1.35, (e1, e2, ratio)


@pytest.mark.parametrize("t0,t1", [(0.6, 1.0), (1.0, 0.25)])
def test_dopri5_adaptive_accuracy(t0, t1):
    assert err("dopri5", 4, t0, t1) < 1e-5


def test_time_grid_exact_endpoints():
    g = time_grid(1.0, 0.3, 7)
    assert g[0] == 1.0 and g[-1] == 0.3 and len(g) == 8


def test_zero_interval_and_bad_args():
    x = torch.randn(2, 3)
    assert torch.equal(integrate(field, x, 0.5, 0.5, 4, "rk4", w=W), x)
    with pytest.raises(MedShiftError):
        integrate(field, x, 0.0, 1.0, 4, "leapfrog")
    with pytest.raises(MedShiftError):
        integrate(field, x, 0.0, 1.0, 0, "euler")


def test_input_not_modified():
    x = torch.randn(2, 3, dtype=torch.float64)
    x_copy = x.clone()
    integrate(field, x, 0.0, 1.0, 3, "rk4", w=W)
    assert torch.equal(x, x_copy)


def test_unguided_field():
    x0 = torch.ones(1, 4, dtype=torch.float64)
    x = integrate(lambda x, t: (A * x, None), x0, 0.0, 1.0, 64, "rk4", w=5.0)
    torch.testing.assert_close(x, x0 * math.exp(A), rtol=1e-8, atol=1e-8)
