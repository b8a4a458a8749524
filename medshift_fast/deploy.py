"""Deployment: translating frames in real time, and loading exported engines.

Two parts, kept in separate sections:

- :class:`FrameTranslator` (real-time translation): a streaming object for one fixed frame size
  and fixed settings (source, target, tau, steps, solver, guidance) over a PyTorch model. It
  preallocates everything (a :class:`medshift_fast.flow.sampler.Sampler` underneath: fused guided
  stages, no per-step allocations, a CUDA graph on CUDA), translates frame after frame
  (float frames in [-1, 1] or raw uint16 detector frames) and keeps per-frame latencies.
- ``load_engine`` (exported engines: ONNX Runtime / AOTInductor / TensorRT): its own section below,
  written by the export work.

Nothing here imports CUDA or Triton at import time.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import MedShiftError
from .flow.sampler import Sampler

__all__ = ["FrameTranslator"]


# =========================================================================== real-time translation
_INPUTS = ("float", "uint16")
_U16_TO_UNIT = 2.0 / 65535.0  # as data.io: v * 2 / (2**16 - 1) - 1
_UNIT_TO_U16 = 32767.5  # as data.io.to_uint16: rint((clip(x, -1, 1) + 1) * 32767.5)


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending list; q in [0, 100]."""
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


class FrameTranslator:
    """Translate a stream of frames of one size from a source to a target domain.

    Args:
        run_or_model: a loaded run (``train.checkpoint.load_run``), a run directory, or a bare
            velocity model (then ``source``/``target`` are label ints and ``size`` is required).
        source, target: domain names (runs) or label ints.
        tau, steps, solver, guidance_encode, guidance_decode: as ``flow.translate``
            (fixed-step solvers only: euler | midpoint | heun | rk4).
        size: frame size S or (H, W) in pixels (default: the run's training size).
        device, dtype: where and in which dtype the model runs (default: the model's).
        input: "float" (frames in [-1, 1], returned as float) or "uint16" (raw 16-bit frames,
            mapped 0..65535 -> [-1, 1] and the result back to uint16, as ``data.io`` does).
        bf16, channels_last, cuda_graph, compile: Sampler options (CUDA graph by default on
            CUDA; ``compile=True`` compiles the forward with Inductor freezing during warm-up).
        warmup: frames of zeros translated at construction (CUDA graph capture, first-call
            costs); they are not counted in the latency statistics.
        history: latencies kept for ``latency_stats`` (the most recent ones).

    ``translator(frame)`` takes a (H, W), (1, H, W) or (1, 1, H, W) tensor or numpy array and
    returns the translated frame with the same shape, kind (tensor or numpy) and device.

    Raises:
        MedShiftError: unknown domain, bad size/settings, or a frame of the wrong shape/kind.
    """

    def __init__(
        self,
        run_or_model,
        source,
        target,
        tau: float = 0.6,
        steps: int = 10,
        solver: str = "euler",
        guidance_encode: float = 2.0,
        guidance_decode: float = 2.0,
        size: int | tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        input: str = "float",  # noqa: A002 - the documented option name
        bf16: bool = False,
        channels_last: bool = False,
        cuda_graph: bool | None = None,
        compile: bool = False,  # noqa: A002 - the Sampler option
        warmup: int = 1,
        history: int = 10_000,
    ) -> None:
        if input not in _INPUTS:
            raise MedShiftError(f"FrameTranslator: input must be one of {_INPUTS}, got {input!r}")
        run = run_or_model
        if isinstance(run, (str, Path)):
            from .train.checkpoint import load_run

            run = load_run(run, device=device or "cpu")
        if isinstance(run, nn.Module):
            model, self.run = run, None
            if size is None:
                raise MedShiftError("FrameTranslator: pass size= (frame size) with a bare model")
            src, tgt = int(source), int(target)
        else:
            model, self.run = run.model, run
            src, tgt = run.label(source), run.label(target)
            size = run.image_size if size is None else size
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1:
            raise MedShiftError(f"FrameTranslator: bad frame size {size}")
        p = next(model.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = dtype or p.dtype
        model.to(device=self.device, dtype=self.dtype).eval()
        self.model, self.size, self.input = model, (h, w), input
        # Latent runs work on autoencoder latents: frames go through the run's codec (eagerly).
        factor = getattr(getattr(run, "codec", None), "factor", 1)
        self._latent = self.run is not None and bool(getattr(self.run, "latent", False))
        if h % factor or w % factor:
            raise MedShiftError(f"FrameTranslator: frame size {h}x{w} must be divisible by the "
                                f"autoencoder factor {factor}")
        mshape = (1, int(getattr(model, "in_channels", 1)), h // factor, w // factor)
        if not self._latent:
            mshape = (1, 1, h, w)
        self.sampler = Sampler(model, mshape, src, tgt, tau, steps, solver, guidance_encode,
                               guidance_decode, device=self.device, dtype=self.dtype, bf16=bf16,
                               channels_last=channels_last, cuda_graph=cuda_graph,
                               compile=compile)
        kw = dict(device=self.device, dtype=self.dtype)
        self._frame = torch.empty((1, 1, h, w), **kw)  # pixel frame in [-1, 1]
        self._y = torch.empty((1, 1, h, w), **kw)  # translated pixel frame
        self._y_model = torch.empty(mshape, **kw)  # translated model-space batch
        self._host_out: dict[tuple, torch.Tensor] = {}  # output staging per (device, dtype)
        self._lat: collections.deque[float] = collections.deque(maxlen=int(history))
        for _ in range(max(0, int(warmup))):
            zero = torch.zeros((h, w), dtype=torch.uint16 if input == "uint16" else self.dtype)
            self(zero)
        self._lat.clear()

    # -------------------------------------------------------------------------------- per frame
    def _as_tensor(self, frame) -> tuple[torch.Tensor, bool]:
        is_np = isinstance(frame, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(frame)) if is_np else frame
        if not isinstance(t, torch.Tensor):
            raise MedShiftError(f"FrameTranslator: a frame must be a tensor or numpy array, got "
                                f"{type(frame).__name__}")
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
        x.view(self.size).copy_(t.reshape(self.size), non_blocking=False)
        if self.input == "uint16":
            x.mul_(_U16_TO_UNIT).sub_(1.0)
        elif not bool(torch.isfinite(x).all()):
            raise MedShiftError("FrameTranslator: frame contains NaN or Inf")
        if self._latent:
            self.sampler.translate(self.run.encode_image(x), out=self._y_model, check_finite=False)
            self._y.copy_(self.run.decode_image(self._y_model))
        else:
            self.sampler.translate(x, out=self._y, check_finite=False)
        y = self._y.view(self.size)
        if self.input == "uint16":
            y.clamp_(-1.0, 1.0).add_(1.0).mul_(_UNIT_TO_U16).round_()
        res = self._out_buffer(t)
        res.copy_(y)  # device -> host (and float -> uint16): synchronises
        if self.device.type == "cuda" and res.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if out is not None:
            out.view(self.size).copy_(res)
            result = out
        else:
            result = res.clone().reshape(t.shape)
            result = result.numpy() if is_np else result
        self._lat.append(time.perf_counter() - t0)
        return result

    translate = __call__

    # ------------------------------------------------------------------------------- statistics
    @property
    def latencies(self) -> list[float]:
        """Per-frame latencies in seconds (most recent ``history`` frames, warm-up excluded)."""
        return list(self._lat)

    def reset_stats(self) -> None:
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
from .export.engines import (  # noqa: E402
    AotiEngine,
    Engine,
    OnnxEngine,
    TensorRTEngine,
    load_engine,
)

__all__ += ["AotiEngine", "Engine", "OnnxEngine", "TensorRTEngine", "load_engine"]
