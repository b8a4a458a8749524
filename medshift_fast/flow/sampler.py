"""A preallocated fixed-step sampler: the fast path of ``translate`` and ``sample``.

For one fixed batch shape (B, C, H, W), dtype, device, solver, step count, tau and guidance
setting, :class:`Sampler` allocates every buffer once -- the 2B model input [x, x], the times of
every stage, the labels [y, null], the ODE state and accumulator -- and then runs the whole
encode (1 -> tau, source label) + decode (tau -> 1, target label) loop with in-place work only:
each stage writes its evaluation point straight into the first half of the model input through
``ops.guided_stage(out=, acc_out=)`` (the fused guidance combine + solver update), copies it
into the second half, and runs one 2B forward. The arithmetic is exactly that of
``flow.solvers.integrate`` (same stages, same coefficients, same time grid), so results match
``flow.translate`` to the tolerance table.

Options: bf16 autocast of the forward (the ODE state stays in the model dtype), channels_last
weights, ``compile=True`` (the forward through ``torch.compile`` for this static shape, with
Inductor's inference *freezing*: weights become constants, convolutions are pre-packed and their
layout chosen once -- on the CPU this is where the time goes, see benchmarks/bench_sampler.py),
and on CUDA the whole loop captured once as a CUDA graph (static input/output buffers,
warm-up on a side stream) and replayed per call. The only allocations left per call are the
network's own activations (inside the graph's private pool on CUDA) and, unless ``out=`` is
passed, the returned copy.

    sampler = Sampler(model, (1, 1, 256, 256), source=0, target=2,
                      **TranslationSettings(0, 2).flow_kwargs())   # every setting explicit
    y = sampler.translate(x)          # x: (1, 1, 256, 256)
    s = sampler.sample()              # (1, 1, 256, 256) images of the target domain from noise
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..errors import MedShiftError
from .guidance import null_label
from .solvers import FIXED_SOLVERS, check_solver, stage_ops, time_grid
from .translate import _labels

__all__ = ["FIXED_SOLVERS", "Sampler", "fused_translate"]

@dataclass(frozen=True)
class _Stage:
    """One model evaluation followed by one ``guided_stage`` call (all tensors preallocated)."""

    guided: bool
    inp: torch.Tensor  # model input: (2B, ...) [x, x] when guided, else its first half (B, ...)
    t: torch.Tensor  # (2B,) or (B,) time of this evaluation
    y: torch.Tensor  # (2B,) [y, null] or (B,) labels
    w: float
    x: torch.Tensor  # guided_stage arguments
    h: float
    acc: torch.Tensor | None
    c: float
    out: torch.Tensor
    acc_out: torch.Tensor | None


class Sampler:
    """Fixed-shape translation/sampling with preallocated buffers (and a CUDA graph on CUDA).

    Args:
        model: velocity field ``model(x, t, y)`` with ``num_classes`` (eval mode expected).
        shape: (B, C, H, W) of every batch this sampler will see.
        source: source domain label(s) for ``translate``: int or (B,) tensor (None: sample only).
        target: target domain label(s): int or (B,) tensor.
        tau: translation time in [0, 1].
        steps: fixed steps per leg.
        solver: euler | midpoint | heun | rk4 (dopri5 is adaptive: use ``flow.translate``).
        guidance_encode, guidance_decode: CFG scales w of the two legs (1 = the conditional
            and 0 = the unconditional field: a B forward each).
        device, dtype: of the buffers and the ODE state (default: the model's parameters').
        bf16: run the forward under bf16 autocast (the ODE state stays in ``dtype``).
        channels_last: convert the model's weights to channels_last (in place; values unchanged).
        compile: run the forward through ``torch.compile(..., dynamic=False)`` with Inductor
            freezing. The weights are captured when the first call compiles (tens of seconds
            on a CPU): build a new Sampler after changing them. Combined with a CUDA graph on
            CUDA (unverified on a GPU so far).
        cuda_graph: capture the loop as a CUDA graph (default: True on CUDA; ignored on CPU).
        backend: guided_stage backend (None: the context's).
        warmup: eager runs on a side stream before the capture.

    Raises:
        MedShiftError: bad shape, solver, tau, steps or labels.
    """

    def __init__(
        self,
        model: nn.Module,
        shape: tuple[int, int, int, int],
        source=None,
        target=0,
        *,
        tau: float,
        steps: int,
        solver: str,
        guidance_encode: float,
        guidance_decode: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        bf16: bool = False,
        channels_last: bool = False,
        cuda_graph: bool | None = None,
        backend: str | None = None,
        warmup: int = 2,
        compile: bool = False,  # noqa: A002 - mirrors torch.compile / TrainConfig.compile
    ) -> None:
        check_solver(solver)
        if solver not in FIXED_SOLVERS:
            raise MedShiftError(f"Sampler: solver {solver!r} is adaptive; choose one of "
                                f"{', '.join(FIXED_SOLVERS)} or use flow.translate")
        if len(shape) != 4 or min(int(s) for s in shape) < 1:
            raise MedShiftError(f"Sampler: shape must be (B, C, H, W) with sizes >= 1, got {shape}")
        if not 0.0 <= float(tau) <= 1.0:
            raise MedShiftError(f"Sampler: tau must be in [0, 1], got {tau}")
        if int(steps) < 1:
            raise MedShiftError(f"Sampler: steps must be >= 1, got {steps}")
        p = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            p.device if p is not None else torch.device("cpu"))
        self.dtype = dtype or (p.dtype if p is not None else torch.float32)
        self.shape = tuple(int(s) for s in shape)
        c = getattr(model, "in_channels", self.shape[1])
        if self.shape[1] != c:
            raise MedShiftError(f"Sampler: model expects {c} channel(s), shape has {self.shape[1]}")
        self.model = model
        self.solver, self.steps, self.tau = solver, int(steps), float(tau)
        self.w_enc, self.w_dec = float(guidance_encode), float(guidance_decode)
        self.bf16, self.backend, self.warmup = bool(bf16), backend, int(warmup)
        self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise MedShiftError("Sampler: cuda_graph=True needs a CUDA device")
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        self._fwd = model
        if self.compiled:
            # Freezing folds the (eval-mode) weights into the graph as constants; it only applies
            # under no_grad, which is how every entry point below runs the loop.
            self._fwd = torch.compile(model, dynamic=False, options={"freezing": True})

        b = self.shape[0]
        kw = dict(device=self.device, dtype=self.dtype)
        self._inp = torch.empty(self.shape, **kw)  # static input (image, or noise for sample)
        self._res = torch.empty(self.shape, **kw)  # static output
        self._xin = torch.empty((2 * b, *self.shape[1:]), **kw)  # model input [x, x]
        self._xa, self._xb = self._xin[:b], self._xin[b:]
        self._x = torch.empty(self.shape, **kw)  # ODE state (midpoint/heun/rk4)
        self._acc = torch.empty(self.shape, **kw)  # accumulator (heun/rk4)
        self._v = torch.empty((2 * b, *self.shape[1:]), **kw)  # model output in dtype (bf16 etc.)
        self._v_halves = (self._v[:b], self._v[b:], self._v)
        self._noise = torch.empty(self.shape, dtype=torch.float32)  # CPU, as flow.sample draws
        self._null = null_label(model)
        self._y_src = torch.full((2 * b,), self._null, device=self.device, dtype=torch.long)
        self._y_tgt = torch.full((2 * b,), self._null, device=self.device, dtype=torch.long)
        self._has_source = False
        self.set_labels(source=source, target=target)
        self._programs: dict[str, tuple[list[_Stage], torch.Tensor, torch.Tensor]] = {}
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}

    # ------------------------------------------------------------------------------ configuration
    def set_labels(self, source=None, target=None) -> None:
        """Change the source and/or target label(s) in place (valid for captured graphs too)."""
        b = self.shape[0]
        k = int(self.model.num_classes)
        if source is not None:
            self._y_src[:b].copy_(_labels(source, b, self.device, k, "Sampler"))
            self._has_source = True
        if target is not None:
            self._y_tgt[:b].copy_(_labels(target, b, self.device, k, "Sampler"))

    @property
    def nfe(self) -> int:
        """Model evaluations per ``translate`` call (each a 2B forward when guided)."""
        return len(self._program("translate")[0])

    def buffers(self) -> dict[str, torch.Tensor]:
        """The preallocated tensors (for inspection: their data_ptrs never change)."""
        return {"input": self._inp, "output": self._res, "model_input": self._xin,
                "state": self._x, "acc": self._acc, "velocity": self._v,
                "labels_source": self._y_src, "labels_target": self._y_tgt,
                **{f"times_{k}": p[1] for k, p in self._programs.items()}}

    # ---------------------------------------------------------------------------------- programs
    def _legs(self, mode: str) -> list[tuple[torch.Tensor, float, float, float]]:
        if mode == "sample":
            return [(self._y_tgt, self.w_dec, 0.0, 1.0)]
        if self.tau == 1.0:
            return []
        return [(self._y_src, self.w_enc, 1.0, self.tau), (self._y_tgt, self.w_dec, self.tau, 1.0)]

    def _program(self, mode: str):
        """(stages, times table, final-state buffer) of ``mode``; built once."""
        if mode in self._programs:
            return self._programs[mode]
        b, solver = self.shape[0], self.solver
        X, A, xa = self._x, self._acc, self._xa
        program = stage_ops(solver)
        # One stage: the state lives in the model input's first half (no copies at all).
        # More: the state X, the accumulator A; every middle stage writes the next evaluation
        # point straight into the model input, the last one writes the new state into X and,
        # through acc_out (base + c k with c = h), the same values into the model input.
        single = len(program) == 1
        evals = []  # (guided, y, w, t, x, h, acc, c, out, acc_out)
        for y, w, t0, t1 in self._legs(mode):
            g = w not in (0.0, 1.0)  # w = 0: the unconditional field alone, a B forward
            if w == 0.0:
                y = y[b:]  # the second half of a label buffer holds the null label
            ts = time_grid(t0, t1, self.steps)
            for k in range(self.steps):
                t, dt = ts[k], ts[k + 1] - ts[k]
                for op in program:
                    tt = t + op.t_frac * dt
                    if single:
                        evals.append((g, y, w, tt, xa, op.h * dt, None, 0.0, xa, None))
                    elif op.last:
                        base = A if op.uses_acc else X
                        evals.append((g, y, w, tt, base, op.h * dt, None, op.h * dt, X, xa))
                    else:
                        evals.append((g, y, w, tt, X, op.h * dt, A if op.uses_acc else None,
                                      op.c * dt, xa, A if op.writes_acc else None))
        times = torch.empty((max(1, len(evals)), 2 * b), device=self.device, dtype=torch.float32)
        for i, e in enumerate(evals):
            times[i].fill_(float(e[3]))
        stages = []
        for i, (g, y, w, _, x, h, acc, c, out, acc_out) in enumerate(evals):
            n = 2 * b if g else b
            stages.append(_Stage(g, self._xin if g else xa, times[i, :n], y[:n], w, x, h, acc, c,
                                 out, acc_out))
        final = xa if single else X
        self._programs[mode] = (stages, times, final)
        return self._programs[mode]

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        # No weight cache: cached casts would be freed after the capture while the graph uses them.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _run(self, mode: str) -> None:
        """The whole loop, reading ``_inp`` and writing ``_res``: in-place work only."""
        stages, _, final = self._program(mode)
        b, gs, model, backend = self.shape[0], ops.guided_stage, self._fwd, self.backend
        self._xa.copy_(self._inp)
        if final is not self._xa:
            final.copy_(self._inp)
        with self._autocast():
            for s in stages:
                if s.guided:
                    self._xb.copy_(self._xa)
                v = model(s.inp, s.t, s.y)
                if v.dtype != self.dtype or not v.is_contiguous():
                    buf = self._v_halves[2] if s.guided else self._v_halves[0]
                    buf.copy_(v)
                    v = buf
                vc, vu = (v[:b], v[b:]) if s.guided else (v, None)
                gs(s.x, vc, vu, s.w, s.h, acc=s.acc, c=s.c, out=s.out, acc_out=s.acc_out,
                   backend=backend)
        self._res.copy_(final)

    def _replay(self, mode: str) -> None:
        if not self.cuda_graph:
            self._run(mode)
            return
        g = self._graphs.get(mode)
        if g is None:
            self._graphs[mode] = g = self._capture(mode)
        g.replay()

    def _capture(self, mode: str) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (kernel autotuning, cuDNN plans), then capture ``_run``."""
        cur = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(cur)
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(max(1, self.warmup)):
                self._run(mode)
        cur.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self._run(mode)
        return graph

    def capture(self) -> None:
        """Capture the translate graph now (otherwise on the first call). No-op off CUDA."""
        if self.cuda_graph and "translate" not in self._graphs:
            self._inp.zero_()
            self._graphs["translate"] = self._capture("translate")

    # ------------------------------------------------------------------------------- entry points
    def _finish(self, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return self._res.clone()
        out.copy_(self._res)
        return out

    @torch.no_grad()
    def translate(self, x: torch.Tensor, out: torch.Tensor | None = None,
                  check_finite: bool = True) -> torch.Tensor:
        """Translate a batch: encode 1 -> tau with the source label, decode tau -> 1.

        Args:
            x: (B, C, H, W) images of this sampler's shape (any dtype/device: copied in).
            out: optional (B, C, H, W) buffer for the result (avoids the returned copy).
            check_finite: raise on NaN/Inf input (one reduction and a host sync).

        Returns:
            (B, C, H, W) translated images (``out`` when given).
        """
        if not self._has_source:
            raise MedShiftError("Sampler.translate: no source label; pass source= or set_labels")
        if tuple(x.shape) != self.shape:
            raise MedShiftError(f"Sampler.translate: this sampler takes batches of shape "
                                f"{self.shape}, got {tuple(x.shape)}; build one per shape")
        if check_finite and not bool(torch.isfinite(x).all()):
            raise MedShiftError("Sampler.translate: input contains NaN or Inf")
        self._inp.copy_(x)
        self._replay("translate")
        return self._finish(out)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """n = B images of the target domain from noise (integrate 0 -> 1, ``guidance_decode``).

        The noise is drawn on the CPU from ``generator`` exactly as ``flow.sample`` draws it.
        """
        if n is not None and int(n) != self.shape[0]:
            raise MedShiftError(f"Sampler.sample: this sampler draws {self.shape[0]} images per "
                                f"call, got n={n}")
        torch.randn(self.shape, generator=generator, out=self._noise)
        self._inp.copy_(self._noise)
        self._replay("sample")
        return self._finish(out)


@torch.no_grad()
def fused_translate(model: nn.Module, x: torch.Tensor, source, target, **kw) -> torch.Tensor:
    """``flow.translate`` through a one-off :class:`Sampler` (fixed-step solvers).

    ``kw``: every translation setting, explicitly (tau, guidance_encode, guidance_decode, steps,
    solver: ``**TranslationSettings(...).flow_kwargs()``), plus any Sampler option. For repeated
    calls on one shape build a Sampler once and call its ``translate``.
    """
    return Sampler(model, tuple(x.shape), source, target, device=x.device, **kw).translate(x)
