"""ODE solvers for dx/dt = v(x, t) with classifier-free guidance fused into every stage.

A *field* is a callable ``field(x, t) -> (v_cond, v_uncond | None)`` with t a Python float; the
guided velocity is k = v_uncond + w (v_cond - v_uncond). Fixed-step solvers (euler, midpoint,
heun, rk4) integrate exactly [t0, t1] (either direction) in ``steps`` steps. Each is described
once, as data: its Butcher tableau (``TABLEAUX``) compiled into a stage program
(``stage_ops``: per U-Net evaluation, one ``ops.guided_stage`` call -- a fused kernel where
available). ``integrate``, the preallocated ``flow.sampler.Sampler`` and the ONNX composer all
execute that program. dopri5 is adaptive (Dormand-Prince 5(4) with error control, landing
exactly on t1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from ..errors import MedShiftError

Field = Callable[[torch.Tensor, float], tuple[torch.Tensor, "torch.Tensor | None"]]
SOLVERS = ("euler", "midpoint", "heun", "rk4", "dopri5")
FIXED_SOLVERS = ("euler", "midpoint", "heun", "rk4")


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method whose stage i is evaluated at x + dt a_i k_{i-1}.

    (a two-diagonal Butcher tableau: every fixed-step solver here has one). Stage i evaluates
    k_i = v(x_i, t + c_i dt) with x_0 = x and x_i = x + dt a_i k_{i-1}; the step returns
    x + dt sum_i b_i k_i.

    Attributes:
        name: solver name.
        c: nodes c_i (c_0 = 0).
        a: a_i, the weight of k_{i-1} in stage i's point (a_0 unused, 0).
        b: weights b_i (sum 1).
        order: convergence order.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    order: int

    @property
    def stages(self) -> int:
        return len(self.b)


TABLEAUX: dict[str, Tableau] = {
    "euler": Tableau("euler", (0.0,), (0.0,), (1.0,), 1),
    "midpoint": Tableau("midpoint", (0.0, 0.5), (0.0, 0.5), (0.0, 1.0), 2),
    "heun": Tableau("heun", (0.0, 1.0), (0.0, 1.0), (0.5, 0.5), 2),
    "rk4": Tableau("rk4", (0.0, 0.5, 0.5, 1.0), (0.0, 0.5, 0.5, 1.0),
                   (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}


@dataclass(frozen=True)
class StageOp:
    """One U-Net evaluation of a step and the ``ops.guided_stage`` call that follows it.

    Evaluate k at ``point`` (the step's start x, or the point the previous op wrote) and time
    t + ``t_frac`` dt, then ``guided_stage(base, k, h, acc, c)``:

    * a middle stage writes the next evaluation point ``x + h k`` (base = the step's start x)
      and, when ``c != 0``, the running sum ``(acc or x) + c k`` of the final combination;
    * the last stage writes the step's result ``base + h k`` with base = the running sum
      (``uses_acc``) or x.

    ``h`` and ``c`` are multiples of dt. Executors (``integrate``, the preallocated
    ``flow.sampler.Sampler``, the ONNX composer) all read this list, so a solver is described
    exactly once.
    """

    t_frac: float
    h: float
    c: float
    uses_acc: bool
    writes_acc: bool
    last: bool


def stage_ops(solver: str) -> tuple[StageOp, ...]:
    """The stage program of one step of a fixed-step solver (see :class:`StageOp`)."""
    tab = TABLEAUX.get(solver)
    if tab is None:
        raise MedShiftError(f"{solver!r} is not a fixed-step solver; choose one of "
                            f"{', '.join(FIXED_SOLVERS)}")
    ops_: list[StageOp] = []
    have_acc = False
    for i in range(tab.stages):
        last = i == tab.stages - 1
        if last:
            ops_.append(StageOp(tab.c[i], tab.b[i], 0.0, have_acc, False, True))
        else:
            writes = tab.b[i] != 0.0
            ops_.append(StageOp(tab.c[i], tab.a[i + 1], tab.b[i], have_acc, writes, False))
            have_acc = have_acc or writes
    return tuple(ops_)


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise MedShiftError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return name


def time_grid(t0: float, t1: float, steps: int) -> list[float]:
    """steps + 1 times from t0 to t1 inclusive (exact end points)."""
    if steps < 1:
        raise MedShiftError(f"steps must be >= 1, got {steps}")
    return [t0 + (t1 - t0) * k / steps for k in range(steps)] + [t1]


def run_step(program: tuple[StageOp, ...], field, stage, x, t: float, dt: float, w: float):
    """One step of ``program`` from (x, t) with step dt, for any executor.

    Args:
        program: ``stage_ops(solver)``.
        field: ``field(point, time) -> (v_cond, v_uncond | None)``.
        stage: ``stage(base, v_cond, v_uncond, w, h, acc, c) -> (new_point, new_acc | None)``
            (``ops.guided_stage`` in PyTorch; ONNX nodes in the composer).
        x: the state at t.

    Returns:
        The state at t + dt.
    """
    point, acc = x, None
    for op in program:
        vc, vu = field(point, t + op.t_frac * dt)
        if op.last:
            return stage(acc if op.uses_acc else x, vc, vu, w, op.h * dt, None, 0.0)[0]
        point, new_acc = stage(x, vc, vu, w, op.h * dt, acc if op.uses_acc else None,
                               op.c * dt)
        if op.writes_acc:
            acc = new_acc
    raise MedShiftError("a solver program must end with its last stage")  # pragma: no cover


class PerSampleGenerators:
    """One CPU generator per batch element: the noise of element i is drawn from its own
    generator, as ``torch.randn(shape[1:], generator=g_i)``, so it does not depend on which
    other elements share the batch (translate.files seeds each from --seed and the file)."""

    def __init__(self, gens) -> None:
        self.gens = list(gens)

    def __len__(self) -> int:
        return len(self.gens)


def randn(shape, generator=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CPU standard normal noise of ``shape`` from a generator or ``PerSampleGenerators``."""
    if isinstance(generator, PerSampleGenerators):
        if len(generator) != shape[0]:
            raise MedShiftError(f"{len(generator)} per-image generators for a batch of "
                                f"{shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype)
                            for g in generator.gens])
    return torch.randn(tuple(shape), generator=generator, dtype=dtype)


def _torch_stage(base, vc, vu, w, h, acc, c):
    return ops.guided_stage(base, vc, vu, w, h, acc=acc, c=c)


@torch.no_grad()
def integrate(
    field: Field,
    x: torch.Tensor,
    t0: float,
    t1: float,
    steps: int,
    solver: str,
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
    program = stage_ops(solver)
    ts = time_grid(t0, t1, steps)
    for k in range(steps):
        x = run_step(program, field, _torch_stage, x, ts[k], ts[k + 1] - ts[k], w)
    return x


@torch.no_grad()
def integrate_sde(field: Field, x: torch.Tensor, t0: float, t1: float, steps: int,
                  noise: float, w: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Integrate, forwards in t (t0 < t1 <= 1), an SDE with the probability-flow ODE's marginals.

    For the path x_t = t x_1 + (1 - t) x_0 (x_0 ~ N(0, I)) the score follows from the velocity,
    s(x, t) = (t v - x) / (1 - t) (as in SiT, Ma et al. 2024), and for any g(t) the SDE
    dx = [v + g^2 / 2 s] dt + g dW has the ODE's marginals. Here g(t)^2 = 2 noise (1 - t)^2:
    the drift is v + noise (1 - t) (t v - x) (no singularity at t = 1) and every step replaces the
    same fraction 2 noise dt of the path noise's variance ((1 - t)^2 at t) by fresh noise
    (g^2 proportional to (1 - t) injects more noise per step than the path holds near t = 1:
    measured noise levels 5-20x the target's with 10 steps, docs/recipe.md). Euler-Maruyama;
    the last step is the plain Euler step, which maps the state onto the model's estimate of
    x_1 instead of leaving that step's injected noise in the output. ``noise = 0`` is exactly
    the Euler ODE; keep 2 noise dt well below 1.

    Args:
        field: ``field(x, t) -> (v_cond, v_uncond | None)``; w: its guidance scale.
        x: (B, ...) state at t0.
        steps: Euler-Maruyama steps.
        noise: the diffusion scale (>= 0).
        generator: CPU generator of the Brownian increments.
    """
    if noise < 0:
        raise MedShiftError(f"the SDE's noise scale must be >= 0, got {noise}")
    if not t0 < t1 <= 1.0:
        raise MedShiftError(f"integrate_sde runs forwards in t with t1 <= 1, got {t0} -> {t1}")
    ts = time_grid(t0, t1, steps)
    for k in range(steps):
        t, dt = ts[k], ts[k + 1] - ts[k]
        vc, vu = field(x, t)
        v = ops.guided_velocity(vc, vu, w)
        if k == steps - 1 or noise == 0.0:
            x = x + dt * v
            continue
        drift = v + noise * (1.0 - t) * (t * v - x)
        dw = randn(x.shape, generator)
        x = x + dt * drift + math.sqrt(2.0 * noise * dt) * (1.0 - t) * dw.to(x.device, x.dtype)
    return x


def nfe(solver: str, steps: int) -> int:
    """Velocity evaluations per fixed-step integration (each is one 2B forward when guided)."""
    check_solver(solver)
    if solver == "dopri5":
        raise MedShiftError("dopri5 is adaptive: its number of evaluations is not fixed")
    return TABLEAUX[solver].stages * steps


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
