"""Deployment: translating frames in real time, and loading exported engines.

Two parts, kept in separate sections:

- :class:`FrameTranslator` (real-time translation): a streaming object for one fixed frame size
  and fixed settings over a run: a thin wrapper of :class:`medshift_fast.translate.Translator`
  in a fused mode (a preallocated Sampler underneath: fused guided stages, no per-step
  allocations, a CUDA graph on CUDA) that vets and times every frame (float frames in [-1, 1]
  or raw uint16 detector frames).
- ``load_engine`` (exported engines: ONNX Runtime / AOTInductor / TensorRT): its own section below,
  written by the export work.

Nothing here imports CUDA or Triton at import time.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path

import torch
from torch import nn

from .errors import MedShiftError
from .flow.solvers import FIXED_SOLVERS
from .translate import DEFAULT, ENGINES, Translator, uint16_to_unit, unit_to_uint16
from .translate.pipeline import as_tensor, to_numpy

__all__ = ["FrameTranslator"]


# =========================================================================== real-time translation
_INPUTS = ("float", "uint16")


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending list; q in [0, 100]."""
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


class FrameTranslator:
    """Translate a stream of frames of one size from a source to a target domain.

    A thin streaming wrapper around :class:`medshift_fast.translate.Translator` in a fused
    mode (``fused`` on the CPU, ``cuda_graph`` on CUDA, ``compiled`` with ``compile=True``) for
    ONE frame shape: the translator's preallocated Sampler is built and warmed up at
    construction, every frame is vetted (shape, dtype, finite values) and timed.

    Args:
        run_or_model: a loaded run (``run.load_run``), a run directory, or a bare velocity model
            (then ``source``/``target`` are label ints and ``size`` is required).
        source, target: domain names (runs) or label ints.
        tau, steps, solver, guidance_encode, guidance_decode: as ``Translator`` (fixed-step
            solvers only: euler | midpoint | heun | rk4; None = the run's defaults,
            ``TranslationSettings`` or a distilled student's own).
        size: frame size S or (H, W) in pixels (default: the run's training size; another size,
            non-square included, needs ``any_size=True``; it must be divisible by the model's
            downsampling factor). Frames larger than the run's tile are translated in tiles
            (blended per solver stage, as the Translator does), planned against the memory
            budget at construction (``plan``).
        device, dtype: where and in which dtype the model runs (default: the model's).
        input: "float" (frames in [-1, 1], returned as float) or "uint16" (raw 16-bit frames,
            mapped 0..65535 -> [-1, 1] and the result back to uint16, as ``data.io`` does).
            Raw MONOCHROME1 detector data (high = dark) must be inverted by the caller
            (65535 - frame) or passed with ``monochrome1=True``.
        monochrome1: invert uint16 frames on the way in and out (MONOCHROME1 data).
        bf16, channels_last, cuda_graph, compile: execution options (CUDA graph by default on
            CUDA; ``compile=True`` compiles the forward with Inductor freezing during warm-up).
            ``bf16=None``: the Translator's choice (bf16 for a one-step student where the
            hardware has it natively and the check holds; never for a flow run).
        engine: a one-step student's execution engine (``translate.engine``: auto | eager |
            channels_last | compile | cuda_graph | onnx); a flow run ignores it.
        tile: the Translator's tile (default: its settings' rule; None: whole frames).
        warmup: frames of zeros translated at construction (CUDA graph capture, first-call
            costs); they are not counted in the latency statistics.
        history: latencies kept for ``latency_stats`` (the most recent ones).
        any_size: allow a frame size other than the run's training size.

    ``translator(frame)`` takes a (H, W), (1, H, W) or (1, 1, H, W) tensor or numpy array and
    returns the translated frame with the same shape, kind (tensor or numpy) and device.

    Raises:
        MedShiftError: unknown domain, bad size/settings, or a frame of the wrong shape, dtype,
            or with NaN/Inf values.
    """

    def __init__(
        self,
        run_or_model,
        source,
        target,
        tau: float | None = None,
        steps: int | None = None,
        solver: str | None = None,
        guidance_encode: float | None = None,
        guidance_decode: float | None = None,
        size: int | tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        input: str = "float",  # noqa: A002 - the documented option name
        monochrome1: bool = False,
        bf16: bool | None = None,
        channels_last: bool = False,
        cuda_graph: bool | None = None,
        compile: bool = False,  # noqa: A002 - the Translator mode
        warmup: int = 1,
        history: int = 10_000,
        any_size: bool = False,
        engine: str = ENGINES[0],
        tile=DEFAULT,
    ) -> None:
        from .run import LoadedRun, load_run

        if input not in _INPUTS:
            raise MedShiftError(f"FrameTranslator: input must be one of {_INPUTS}, got {input!r}")
        run = run_or_model
        if isinstance(run, (str, Path)):
            run = load_run(run, device=device or "cpu")
        elif isinstance(run, nn.Module):
            if size is None:
                raise MedShiftError("FrameTranslator: pass size= (frame size) with a bare model")
            run = LoadedRun.from_model(run)
            source, target = int(source), int(target)
        if size is None:
            size = run.image_size
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1:
            raise MedShiftError(f"FrameTranslator: bad frame size {size}")
        s0 = run.image_size
        if s0 is not None and (h, w) != (s0, s0) and not any_size:
            raise MedShiftError(f"FrameTranslator: this run was trained on {s0}x{s0} images but "
                                f"the frames are {h}x{w}; resize frames to {s0}x{s0}, or pass "
                                "any_size=True to run the fully convolutional network at that "
                                "size (its quality there is not measured)")
        if dtype is not None:
            run.model.to(dtype)
        dev = torch.device(device) if device is not None else run.device
        if cuda_graph and dev.type != "cuda":
            raise MedShiftError("FrameTranslator: cuda_graph=True needs a CUDA device")
        mode = ("compiled" if compile else
                "cuda_graph" if (cuda_graph is None and dev.type == "cuda") or cuda_graph
                else "fused")
        if solver is not None and solver not in FIXED_SOLVERS:
            raise MedShiftError(f"FrameTranslator: solver {solver!r} is adaptive; choose one of "
                                f"{', '.join(FIXED_SOLVERS)}")
        self.translator = Translator(run, source, target, tau=tau, steps=steps, solver=solver,
                                     guidance_encode=guidance_encode,
                                     guidance_decode=guidance_decode, mode=mode, device=dev,
                                     bf16=bf16, channels_last=channels_last, batch_size=1,
                                     engine=engine, tile=tile)
        tr = self.translator
        tr.check_size(h, w)
        tr.check_shape(h, w, "the frame size")
        self.plan = tr.plan((1, tr.image_channels, h, w), what=f"a {h}x{w} frame")  # before any
        # allocation: a frame size that cannot fit is refused here, not at the first frame
        self.run, self.model, self.device, self.dtype = run, run.model, tr.device, tr.dtype
        self.size, self.input, self.monochrome1 = (h, w), input, bool(monochrome1)
        c = tr.image_channels
        self._shape = (1, c, h, w)
        self._frame = torch.empty(self._shape, device=self.device, dtype=torch.float32)
        self._host_out: dict[tuple, torch.Tensor] = {}  # output staging per (device, dtype)
        self._lat: collections.deque[float] = collections.deque(maxlen=int(history))
        for _ in range(max(0, int(warmup))):
            zero = torch.zeros((h, w), dtype=torch.uint16 if input == "uint16" else torch.float32)
            self(zero)
        self._lat.clear()

    @property
    def sampler(self):
        """The preallocated Sampler behind this translator (pixel mode)."""
        c, h, w = self._shape[1:]
        f = self.translator.codec.factor
        return self.translator.sampler((1, int(self.model.in_channels), h // f, w // f))

    @property
    def settings(self):
        """The translator's ``TranslationSettings`` (fixed for this stream)."""
        return self.translator.settings

    # -------------------------------------------------------------------------------- per frame
    def _as_tensor(self, frame) -> tuple[torch.Tensor, bool]:
        t, is_np = as_tensor(frame, "FrameTranslator: a frame")
        h, w = self.size
        if tuple(t.shape) not in ((h, w), (1, h, w), (1, 1, h, w)):
            raise MedShiftError(f"FrameTranslator: expected a frame of shape ({h}, {w}) or "
                                f"(1, 1, {h}, {w}), got {tuple(t.shape)}; build one translator "
                                "per frame size")
        if self.input == "uint16" and t.dtype != torch.uint16:
            raise MedShiftError(f"FrameTranslator(input='uint16'): frames must be uint16, got "
                                f"{t.dtype}")
        if self.input == "float" and not t.is_floating_point():
            raise MedShiftError(f"FrameTranslator(input='float'): frames must be floating point in "
                                f"[-1, 1], got {t.dtype}; use input='uint16' for raw frames")
        return t, is_np

    def _out_buffer(self, like: torch.Tensor) -> torch.Tensor:
        dt = torch.uint16 if self.input == "uint16" else like.dtype
        key = (like.device, dt)
        if key not in self._host_out:  # once per output device/dtype, not per frame
            pin = like.device.type == "cpu" and self.device.type == "cuda"
            self._host_out[key] = torch.empty(self.size, dtype=dt, device=like.device,
                                              pin_memory=pin)
        return self._host_out[key]

    @torch.no_grad()
    def __call__(self, frame, out: torch.Tensor | None = None):
        """Translate one frame (see the class docstring); ``out`` may receive the (H, W) result."""
        t0 = time.perf_counter()
        t, is_np = self._as_tensor(frame)
        x = self._frame
        if self.input == "uint16":
            x.view(self.size).copy_(uint16_to_unit(t.reshape(self.size)))
            if self.monochrome1:
                x.neg_()
        else:
            x.view(self.size).copy_(t.reshape(self.size), non_blocking=False)
            if not bool(torch.isfinite(x).all()):
                raise MedShiftError("FrameTranslator: frame contains NaN or Inf")
        y = self.translator.translate(x).view(self.size)
        if self.input == "uint16":
            if self.monochrome1:
                y = -y
            y = unit_to_uint16(y)
        res = self._out_buffer(t)
        res.copy_(y)  # device -> host (and float -> uint16): synchronises
        if self.device.type == "cuda" and res.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if out is not None:
            out.view(self.size).copy_(res)
            result = out
        else:
            result = res.clone().reshape(t.shape)
            result = to_numpy(result) if is_np else result
        self._lat.append(time.perf_counter() - t0)
        return result

    translate = __call__

    # ------------------------------------------------------------------------------- statistics
    @property
    def latencies(self) -> list[float]:
        """Per-frame latencies in seconds (most recent ``history`` frames, warm-up excluded)."""
        return list(self._lat)

    def reset_stats(self) -> None:
        """Forget the latencies recorded so far."""
        self._lat.clear()

    def latency_stats(self) -> dict[str, float]:
        """{frames, mean_ms, p50_ms, p99_ms, max_ms, fps} over the recorded frames."""
        v = sorted(self._lat)
        if not v:
            return {"frames": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p99_ms": math.nan,
                    "max_ms": math.nan, "fps": math.nan}
        mean = sum(v) / len(v)
        return {"frames": len(v), "mean_ms": 1e3 * mean, "p50_ms": 1e3 * _percentile(v, 50),
                "p99_ms": 1e3 * _percentile(v, 99), "max_ms": 1e3 * v[-1], "fps": 1.0 / mean}


# ================================================================================ exported engines
# Engine files written by `medshift export` (ONNX Runtime .onnx, AOTInductor .pt2, TensorRT plans,
# each with a FILE.json sidecar). Implemented in medshift_fast/export/engines.py, re-exported here;
# importing it loads no runtime (onnxruntime / tensorrt are imported when an engine is opened).
from .export import student_engine as _student_engine  # noqa: E402, F401 - engine "onnx"
from .export.engines import (  # noqa: E402
    AotiEngine,
    Engine,
    OnnxEngine,
    TensorRTEngine,
    load_engine,
)

__all__ += ["AotiEngine", "Engine", "OnnxEngine", "TensorRTEngine", "load_engine"]
