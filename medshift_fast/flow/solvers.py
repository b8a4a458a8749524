"""ODE solvers for dx/dt = v(x, t) with classifier-free guidance fused into every stage.

A *field* is a callable ``field(x, t) -> (v_cond, v_uncond | None)`` with t a Python float; the
guided velocity is k = v_uncond + w (v_cond - v_uncond). Fixed-step solvers (euler, midpoint,
heun, rk4) integrate exactly [t0, t1] (either direction) in ``steps`` steps, each stage being one
``ops.guided_stage`` call (a fused kernel where available); dopri5 is adaptive (Dormand-Prince
5(4) with error control, landing exactly on t1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import ops
from ..errors import MedShiftError

Field = Callable[[torch.Tensor, float], tuple[torch.Tensor, "torch.Tensor | None"]]
SOLVERS = ("euler", "midpoint", "heun", "rk4", "dopri5")
_NFE = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise MedShiftError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return name


def time_grid(t0: float, t1: float, steps: int) -> list[float]:
    """steps + 1 times from t0 to t1 inclusive (exact end points)."""
    if steps < 1:
        raise MedShiftError(f"steps must be >= 1, got {steps}")
    return [t0 + (t1 - t0) * k / steps for k in range(steps)] + [t1]


def _step(field: Field, solver: str, x: torch.Tensor, t: float, dt: float, w: float,
          out: torch.Tensor | None = None) -> torch.Tensor:
    gs = ops.guided_stage
    if solver == "euler":
        vc, vu = field(x, t)
        return gs(x, vc, vu, w, dt, out=out)[0]
    if solver == "midpoint":
        vc, vu = field(x, t)
        xm = gs(x, vc, vu, w, 0.5 * dt)[0]
        vc, vu = field(xm, t + 0.5 * dt)
        return gs(x, vc, vu, w, dt, out=out)[0]
    if solver == "heun":
        vc, vu = field(x, t)
        xp, acc = gs(x, vc, vu, w, dt, c=0.5 * dt)
        vc, vu = field(xp, t + dt)
        return gs(acc, vc, vu, w, 0.5 * dt, out=out)[0]
    if solver == "rk4":
        vc, vu = field(x, t)
        xs, acc = gs(x, vc, vu, w, 0.5 * dt, c=dt / 6.0)
        vc, vu = field(xs, t + 0.5 * dt)
        xs, acc = gs(x, vc, vu, w, 0.5 * dt, acc=acc, c=dt / 3.0, out=xs, acc_out=acc)
        vc, vu = field(xs, t + 0.5 * dt)
        xs, acc = gs(x, vc, vu, w, dt, acc=acc, c=dt / 3.0, out=xs, acc_out=acc)
        vc, vu = field(xs, t + dt)
        return gs(acc, vc, vu, w, dt / 6.0, out=out)[0]
    raise MedShiftError(f"unknown fixed-step solver {solver!r}")


@torch.no_grad()
def integrate(
    field: Field,
    x: torch.Tensor,
    t0: float,
    t1: float,
    steps: int = 20,
    solver: str = "heun",
    w: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> torch.Tensor:
    """Integrate dx/dt = k(x, t) from t0 to t1.

    Args:
        field: ``field(x, t) -> (v_cond, v_uncond or None)``.
        x: (B, ...) state at t0.
        t0, t1: interval end points (t1 < t0 integrates backwards).
        steps: fixed steps over [t0, t1] (ignored by dopri5 except as the initial step guess).
        solver: euler | midpoint | heun | rk4 | dopri5.
        w: guidance scale (irrelevant when the field returns v_uncond = None).
        rtol, atol, max_steps: dopri5 error control.

    Returns:
        (B, ...) state at t1 (a new tensor; x is not modified).
    """
    check_solver(solver)
    if t0 == t1:
        return x.clone()
    if solver == "dopri5":
        return _dopri5(field, x, t0, t1, w, rtol, atol, max_steps, steps)
    ts = time_grid(t0, t1, steps)
    x = x.clone()
    for k in range(steps):
        x = _step(field, solver, x, ts[k], ts[k + 1] - ts[k], w, out=x)
    return x


def nfe(solver: str, steps: int) -> int:
    """Velocity evaluations per fixed-step integration (each is one 2B forward when guided)."""
    return _NFE[check_solver(solver)] * steps


# Dormand-Prince 5(4) tableau.
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def _dopri5(field, x, t0, t1, w, rtol, atol, max_steps, steps):
    def k_of(xx, tt):
        vc, vu = field(xx, tt)
        return ops.guided_velocity(vc, vu, w).float()

    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    h = span / max(1, steps)
    t = t0
    y = x.float().clone()
    k1 = k_of(x, t)
    n = 0
    while direction * (t1 - t) > 1e-12:
        if n >= max_steps:
            raise MedShiftError(f"dopri5: exceeded {max_steps} steps; loosen rtol/atol")
        h = min(h, abs(t1 - t))
        dt = direction * h
        ks = [k1]
        for s in range(1, 7):
            yi = y + dt * sum(a * ks[j] for j, a in enumerate(_A[s]) if a != 0.0)
            ks.append(k_of(yi.to(x.dtype), t + _C[s] * dt))
        y5 = y + dt * sum(b * ks[j] for j, b in enumerate(_B5) if b != 0.0)
        y4 = y + dt * sum(b * ks[j] for j, b in enumerate(_B4) if b != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        err = float(torch.sqrt(torch.mean(((y5 - y4) / scale) ** 2)))
        n += 1
        if err <= 1.0 or h < 1e-10:
            t = t1 if abs(t1 - (t + dt)) < 1e-12 else t + dt
            y = y5
            k1 = ks[6]  # FSAL
        factor = 0.9 * (1.0 / max(err, 1e-10)) ** 0.2
        h = h * min(5.0, max(0.2, factor)) if math.isfinite(factor) else h * 0.2
    return y.to(x.dtype)
