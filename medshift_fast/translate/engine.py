"""How a one-step student's network runs on this machine: the Translator's execution engines.

A distilled one-step student is one network call per tile, so what a translation costs is how
that call runs. ``Translator(engine=...)`` / ``medshift translate --engine``:

* ``eager``          fp32 PyTorch as written (NCHW): the reference every engine is tested against;
* ``channels_last``  a copy of the network with channels-last (NHWC) weights and tiles: oneDNN's
  blocked convolutions without a re-layout per call;
* ``compile``        ``torch.compile`` (Inductor: C++/OpenMP code with oneDNN convolutions on a CPU,
  the weights frozen), compiled on the first call of each tile shape;
* ``cuda_graph``     (CUDA) each tile shape's forward captured once and replayed;
* ``onnx``           ONNX Runtime's execution provider through the exported engine
  (``export.student_engine``: exported once into a cache keyed by the weights' hash and the
  settings, verified against eager, reused; provided by the export layer when it is imported --
  the command line and ``FrameTranslator`` do);
* ``auto``           ``choose``: what ``benchmarks/bench_lean.py`` measured fastest end to end.

Precision (``bf16``: None = auto): the network under bf16 autocast (the residual is added to the
fp32 input, so the identity path stays exact). Auto takes bf16 only where the hardware computes
it natively (a CPU with ``avx512_bf16`` or AMX, ``cpu_flags``; a CUDA GPU with bf16) AND the check
holds (``bf16_ok``, run once per translator on its own network and settings): the PSNR of the
bf16 translation of a fixed probe against the fp32 one is at least ``BF16_MIN_PSNR`` dB, AND the
rms of that difference is at most ``BF16_MAX_GRAIN_FRACTION`` of the faintest grain of the
target domain that the student records (its texture model's measured noise per signal level,
``models.texture``). bf16's rounding is itself a texture: on the demo's students it is a third to
a half of the real targets' grain in their darkest regions (docs/distill.md's
``texture-precision`` block measures what it does to the noise level and the C2ST), so a
student that records no grain keeps fp32 unless bf16 is asked for.

Threads: ``machine_threads`` -- the CPUs this process may run on (``os.sched_getaffinity``), the
thread count of ``medshift translate`` and of ONNX Runtime sessions unless told otherwise.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable

import torch
from torch import nn

from ..errors import MedShiftError
from .settings import ENGINES

__all__ = ["BF16_MAX_GRAIN_FRACTION", "BF16_MIN_PSNR", "ENGINES", "StudentEngine", "available",
           "bf16_check", "bf16_ok", "build", "choose", "cpu_flags", "grain_floor",
           "machine_threads", "native_bf16", "provide", "probe"]

#: bf16 is used only when it changes the translation less than exact tiling may change it
#: (issue 30's tiled-vs-whole bar): PSNR(bf16, fp32) of the probe in dB
BF16_MIN_PSNR = 45.0
#: ... and only when it leaves the grain alone: bf16's rms error on the probe at most this
#: fraction of the faintest grain the student records for the target (a 1 % change of the
#: grain's variance there)
BF16_MAX_GRAIN_FRACTION = 0.1
_PROVIDED: dict[str, Callable] = {}  # engines of the layers above (export: "onnx")


def machine_threads() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (CPU: avx512_bf16 or AMX tiles, with oneDNN)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()


def provide(name: str, factory: Callable) -> None:
    """Register an engine implemented by a layer above ``translate`` (``factory(translator, bf16)
    -> StudentEngine``); ``export.student_engine`` provides ``onnx``."""
    if name not in ENGINES:
        raise MedShiftError(f"unknown engine {name!r}; the engines are {', '.join(ENGINES)}")
    _PROVIDED[name] = factory


def available(name: str, device: torch.device) -> bool:
    """Whether engine ``name`` can run on ``device`` here."""
    if name in ("eager", "channels_last", "compile", "auto"):
        return True
    if name == "cuda_graph":
        return device.type == "cuda"
    factory = _PROVIDED.get(name)
    ok = getattr(factory, "available", None)
    return factory is not None and (ok is None or bool(ok(device)))


def probe(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """A fixed radiograph-like probe (B, C, H, W) in [-1, 1]: smooth anatomy-scale structure, an
    edge, and fine noise (what a translation changes most)."""
    b, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = 0.5 * torch.sin(3 * xx + 2 * yy) * torch.cos(2 * yy - xx) + 0.3 * (xx > 0.2)
    img = base + 0.05 * torch.randn(b, c, h, w, generator=g)
    return img.clamp(-1, 1)


class StudentEngine:
    """The eager engine (and the base of the others): ``translate`` has ``Student.translate``'s
    signature and returns float32.

    Args:
        student: the one-step student (not modified; channels_last and compile work on a copy).
        bf16: run the network under bf16 autocast.
        channels_last: a channels-last copy of the network, tiles converted on the way in.
    """

    name = "eager"

    def __init__(self, student: nn.Module, bf16: bool = False,
                 channels_last: bool = False) -> None:
        self.student, self.bf16, self.channels_last = student, bool(bf16), bool(channels_last)
        self.device = next(student.parameters()).device
        if self.channels_last:
            self.student = copy.deepcopy(student).eval().to(memory_format=torch.channels_last)
        self.fn = self.student.translate

    def _in(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not self.channels_last:
            return t
        return t.contiguous(memory_format=torch.channels_last)

    def translate(self, z: torch.Tensor, tau: float, y_src: torch.Tensor, y_tgt: torch.Tensor,
                  noise: torch.Tensor | None = None, noise_scale: float | None = None
                  ) -> torch.Tensor:
        """The student's translation of model-space images ``z`` (B, C, h, w), float32."""
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            y = self.fn(self._in(z), tau, y_src, y_tgt, self._in(noise), noise_scale)
        return y.float().contiguous()

    __call__ = translate

    def describe(self) -> str:
        """The engine in a few words (e.g. ``channels_last, bf16``)."""
        return f"{self.name}, {'bf16' if self.bf16 else 'fp32'}"


class _ChannelsLast(StudentEngine):
    name = "channels_last"

    def __init__(self, student: nn.Module, bf16: bool = False) -> None:
        super().__init__(student, bf16, channels_last=True)


class _Compiled(StudentEngine):
    """``torch.compile`` of the student's translation (a channels-last copy, frozen weights)."""

    name = "compile"

    def __init__(self, student: nn.Module, bf16: bool = False) -> None:
        super().__init__(student, bf16, channels_last=True)
        self.fn = torch.compile(self.student.translate, options={"freezing": True})


class _CudaGraph(StudentEngine):
    """Each (tile shape, tau) captured once as a CUDA graph and replayed."""

    name = "cuda_graph"

    def __init__(self, student: nn.Module, bf16: bool = False) -> None:
        super().__init__(student, bf16)
        if self.device.type != "cuda":
            raise MedShiftError("engine 'cuda_graph' needs a CUDA device")
        self._graphs: dict[tuple, tuple] = {}

    def translate(self, z, tau, y_src, y_tgt, noise=None, noise_scale=None):
        """Replay the captured graph of this shape (captured on its first call)."""
        key = (tuple(z.shape), None if noise is None else tuple(noise.shape), float(tau),
               noise_scale, z.dtype)
        got = self._graphs.get(key)
        if got is None:
            if len(self._graphs) >= 8:
                self._graphs.pop(next(iter(self._graphs)))
            ins = [z.clone(), y_src.clone(), y_tgt.clone(),
                   None if noise is None else noise.clone()]

            def run():
                return super(_CudaGraph, self).translate(ins[0], tau, ins[1], ins[2], ins[3],
                                                         noise_scale)

            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    run()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run()
            got = self._graphs[key] = (graph, ins, out)
        graph, ins, out = got
        for dst, src in zip(ins, (z, y_src, y_tgt, noise)):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return out.clone()


_BUILT_IN = {"eager": StudentEngine, "channels_last": _ChannelsLast, "compile": _Compiled,
             "cuda_graph": _CudaGraph}


def bf16_check(student: nn.Module, tau: float, y_src: int, y_tgt: int, side: int,
               channels_last: bool = True) -> float:
    """PSNR (dB, peak-to-peak 2) of the bf16 translation of ``probe`` against the fp32 one.

    Args:
        student: the one-step student.
        tau, y_src, y_tgt: the translation it will run.
        side: the probe's side (a multiple of the network's factor).
        channels_last: the engine's memory format.
    """
    dev = next(student.parameters()).device
    x = probe((1, int(student.in_channels), side, side)).to(dev)
    ys = torch.full((1,), int(y_src), device=dev)
    yt = torch.full((1,), int(y_tgt), device=dev)
    n = student.draw_noise(tuple(x.shape), torch.Generator().manual_seed(1), dev) \
        if getattr(student, "stochastic", False) else None
    with torch.no_grad():
        ref = StudentEngine(student).translate(x, tau, ys, yt, n).clamp(-1, 1)
        low = StudentEngine(student, True, channels_last).translate(x, tau, ys, yt, n)
    mse = float(((low.clamp(-1, 1) - ref) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def grain_floor(student: nn.Module, y_tgt: int) -> float | None:
    """The faintest grain of target ``y_tgt`` the student records (the minimum over signal
    levels of its texture model's measured noise, ``DetectorNoise.residual_std``), or None."""
    model = (getattr(student, "textures", None) or {}).get(int(y_tgt))
    if model is None or not getattr(model, "residual_std", ()):
        return None
    return float(min(model.residual_std))


def bf16_ok(student: nn.Module, tau: float, y_src: int, y_tgt: int, side: int) -> bool:
    """Whether ``auto`` may run this translation in bf16 (module docstring: the PSNR bar and the
    grain bar; a student without a recorded grain: no)."""
    floor = grain_floor(student, y_tgt)
    if floor is None:
        return False
    db = bf16_check(student, tau, y_src, y_tgt, side)
    rms = 0.0 if math.isinf(db) else 2.0 * 10.0 ** (-db / 20.0)
    return db >= BF16_MIN_PSNR and rms <= BF16_MAX_GRAIN_FRACTION * floor


def choose(local: bool, device: torch.device, bf16: bool | None,
           bf16_ok: Callable[[], bool]) -> tuple[str, bool]:
    """The engine ``auto`` resolves to, and whether it runs bf16.

    What ``benchmarks/bench_lean.py`` measured on the lean student (results/lean_cpu.md): on one
    512-px tile, one thread, CPU time relative to eager fp32, compile + bf16 and channels_last +
    bf16 lead, then ONNX Runtime, compile and channels_last in fp32 within a few per cent of
    each other, then eager; end to end (``medshift translate --size native``, 2048², two
    threads) channels_last fp32 beat ONNX Runtime fp32 in time and held a third less memory
    (ONNX Runtime's arena), with no export step. bf16 only where ``bf16_ok`` holds (the grain
    bar keeps the shipped students in fp32). ``compile`` is the fastest once compiled, but its
    first call compiles for seconds to tens of seconds per process and tile shape (the table's
    "first call" column) -- more than it saves on one 2k radiograph. So ``auto`` takes
    channels_last, in bf16 where the CPU has native bf16 and the check holds, else in fp32;
    ``--engine onnx`` / ``compile`` are there when asked. A network that is not local (the
    U-Net student: attention, GroupNorm) keeps eager fp32, the path it was measured and
    published with; on CUDA the network runs eager (the GPU stage of
    benchmarks/gpu/run_gpu_checks.sh measures the others there).

    Args:
        local: the network has a finite receptive field (``models.receptive_halo``).
        device: where it runs.
        bf16: the caller's precision (None: auto).
        bf16_ok: runs the quality check (``bf16_ok``: the PSNR and grain bars) when asked.
    """
    if device.type == "cuda" or not local:
        return "eager", bool(bf16) if bf16 is not None else False
    use_bf16 = bool(bf16) if bf16 is not None else (native_bf16(device) and bf16_ok())
    return "channels_last", use_bf16


def build(name: str, translator, bf16: bool) -> StudentEngine:
    """Engine ``name`` (not ``auto``) for ``translator``'s student."""
    if name in _BUILT_IN:
        return _BUILT_IN[name](translator.model, bf16)
    factory = _PROVIDED.get(name)
    if factory is None:
        raise MedShiftError(f"engine {name!r} is provided by medshift_fast.export: import "
                            "medshift_fast.export first (`medshift translate` and "
                            "FrameTranslator do)")
    return factory(translator, bf16)
