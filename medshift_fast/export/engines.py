"""Loaded engines with one calling convention for ONNX Runtime, AOTInductor and TensorRT.

``load_engine(path)`` reads and checks the JSON sidecar (format version, SHA-256 of the file),
then opens the engine with its runtime. A ``translate`` engine is called as ``engine(images)``;
a ``step`` engine as ``engine(x, t, y)``. Inputs may be torch tensors or NumPy arrays; the result
is of the same kind (a tensor on the input's device, or an array).

``translate`` images: (B, C, S, S), (C, S, S) or (S, S) (the result has the same shape),
float in [-1, 1] for ``io="float"`` engines, uint16 (or integers in 0..2**bits - 1, the bit depth
the sidecar declares) for ``io="uint16"``. Every input is checked against the sidecar's
``"input"`` entry (:func:`input_spec`) before any work, by one function (:meth:`Engine.check_input`)
with the Translator's one-line messages: dtype, range ([-1, 1] for float engines: raw counts
such as float 0..1023 are refused; 0..2**bits - 1 for integer ones), NaN, shape.
``step``: x (B, C, S, S) float, t a float or (B,) floats, y an int or (B,) ints.

Engines of latent-mode runs (``engine.space == "latent"``): ``translate`` takes and returns
pixel images like any other (the autoencoder is inside the graph); ``step`` works on latents
(C = z_c, S = pixel size / f, as ``engine.size`` / ``engine.in_channels`` say).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import MedShiftError
from ..translate.checks import check_unit_range
from ..translate.pipeline import as_tensor, to_numpy
from .graphs import ExportSettings
from .sidecar import SUFFIXES, input_spec, read_sidecar

__all__ = ["Engine", "OnnxEngine", "AotiEngine", "TensorRTEngine", "load_engine"]


class Engine:
    """Base class: validates inputs against the sidecar, runs ``_run``, restores the shape.

    Attributes:
        path: the engine file.
        meta: the sidecar (dict).
        settings: the ExportSettings it was exported with (``settings.size`` is the pixel size).
        domains: domain names of the model (index = label).
        size, in_channels: side and channels of the graph's image tensors.
        space: "pixel", or "latent" for a latent-mode run (``latent``: its autoencoder
            reference).
    """

    kind = "engine"

    def __init__(self, path: str | Path, meta: dict, monochrome1: bool = False) -> None:
        self.monochrome1 = bool(monochrome1)
        self.path = Path(path)
        self.meta = meta
        self.settings = ExportSettings.from_dict(meta["settings"])
        self.what = self.settings.what
        self.size = int(meta["size"])
        self.in_channels = int(meta["in_channels"])
        self.num_classes = int(meta["num_classes"])
        self.domains = tuple(meta.get("domains") or ())
        self.space = meta.get("space", "pixel")
        self.latent = meta.get("latent")
        self.input_names = [i["name"] for i in meta["inputs"]]
        self.dynamic, self.factor = bool(meta.get("dynamic")), int(meta.get("factor", 1))
        self.noise_channels = int(meta.get("noise_channels", 0))
        self.output_name = meta["outputs"][0]["name"]
        self.input = meta.get("input") or input_spec(self.settings)  # older sidecars: from io

    def __repr__(self) -> str:
        s = self.settings
        extra = (f"{s.solver}, {s.steps} steps, tau={s.tau}, io={s.io}" if self.what == "translate"
                 else f"w={s.guidance}")
        space = ", latent" if self.space == "latent" else ""
        return f"{type(self).__name__}({self.path.name}: {self.what}, {extra}, {s.dtype}{space})"

    # ------------------------------------------------------------------------------ calling
    def __call__(self, *args):
        if self.what == "translate":
            n = 2 if self.noise_channels else 1
            if not 1 <= len(args) <= n:
                raise MedShiftError("a translate engine takes one argument: engine(images)" +
                                    (" (a stochastic student's also its noise maps: "
                                     "engine(images, noise))" if n == 2 else ""))
            return self._translate(*args)
        if len(args) != 3:
            raise MedShiftError("a step engine takes three arguments: engine(x, t, y)")
        return self._step(*args)

    def _check_image(self, x: torch.Tensor, what: str) -> torch.Tensor:
        c, s = self.in_channels, self.size
        if x.dim() == 2:
            x = x[None, None]
        elif x.dim() == 3:
            x = x[None]
        free = self.dynamic and x.dim() == 4 and x.shape[1] == c and min(x.shape[2:]) > 0 and \
            x.shape[2] % self.factor == 0 and x.shape[3] % self.factor == 0
        if not free and (x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s)):
            if self.space == "latent" and self.what == "step":
                raise MedShiftError(f"step: this engine works in a latent-mode run's latent space "
                                    f"and takes ({c}, {s}, {s}) latents (batched or not), got "
                                    f"shape {tuple(x.shape)}; encode images with the run's "
                                    "autoencoder first, or export --what translate")
            if self.dynamic:
                raise MedShiftError(f"{what}: this engine takes ({c}, H, W) images (batched or "
                                    f"not) with H and W multiples of {self.factor}, got shape "
                                    f"{tuple(x.shape)}; pad or crop first")
            raise MedShiftError(f"{what}: this engine takes ({c}, {s}, {s}) images (batched or "
                                f"not), got shape {tuple(x.shape)}; resize/crop first or "
                                "re-export with --size")
        return x

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Refuse what this translate engine does not take, before any work (one line each):
        a float engine takes finite float images in [-1, 1] (not raw counts, not uint16), an
        integer engine integers in 0..2**bits - 1 (not floats). Returns ``x`` as the engine's
        input dtype (float32 / uint16)."""
        spec = self.input
        if spec["dtype"] == "uint16":
            bits = int(spec.get("bits", 16))
            if x.is_floating_point() or x.dtype == torch.bool:
                raise MedShiftError(f"this engine takes {bits}-bit integer frames (io=uint16), "
                                    f"got {x.dtype}; pass the raw counts as uint16 (or use an "
                                    "engine exported with --io float for [-1, 1] images)")
            if x.dtype != torch.uint16 and x.numel():
                lo, hi = int(x.min()), int(x.max())
                if lo < 0 or hi > 2**bits - 1:
                    raise MedShiftError(f"this engine takes {bits}-bit frames (0..{2**bits - 1}), "
                                        f"got values in [{lo}, {hi}]; pass the detector's raw "
                                        "counts")
            elif x.numel() and bits < 16 and int(x.to(torch.int32).max()) > 2**bits - 1:
                raise MedShiftError(f"this engine takes {bits}-bit frames (0..{2**bits - 1}), got "
                                    f"values up to {int(x.to(torch.int32).max())}")
            return x if x.dtype == torch.uint16 else x.to(torch.int32).to(torch.uint16)
        if x.dtype == torch.uint16 or not x.is_floating_point():
            raise MedShiftError(f"this engine takes float images in [-1, 1] (io=float), got "
                                f"{x.dtype} (raw counts?); {self.UNIT_FIX}")
        check_unit_range(x, "this engine (io=float)", self.UNIT_FIX)
        return x.to(torch.float32)

    #: what to do with images that are not float in [-1, 1]
    UNIT_FIX = ("map raw counts u of b bits to [-1, 1] with u / (2**b - 1) * 2 - 1 (or read "
                "files with medshift_fast.read_image), or export with --io uint16 for raw "
                "16-bit frames")

    def _noise(self, noise, x: torch.Tensor) -> torch.Tensor:
        """A stochastic student's noise maps for images ``x`` (None: zeros)."""
        want = (x.shape[0], self.noise_channels, *x.shape[2:])
        if noise is None:
            return torch.zeros(want, dtype=torch.float32)
        n, _ = as_tensor(noise, "noise")
        n = n.reshape(want) if n.numel() == math.prod(want) else n
        if tuple(n.shape) != want or not n.is_floating_point():
            raise MedShiftError(f"noise must be float maps of shape {want}, got "
                                f"{tuple(n.shape)} {n.dtype}")
        if not bool(torch.isfinite(n).all()):
            raise MedShiftError("the noise maps contain NaN or Inf")
        return n.to(torch.float32).contiguous()

    def _translate(self, images, noise=None):
        x, from_np = as_tensor(images, "images")
        shape, device = tuple(x.shape), x.device
        x = self.check_input(self._check_image(x, "translate"))
        if x.dtype == torch.uint16:
            if self.monochrome1:  # raw MONOCHROME1 counts: high = dark; the model wants bone bright
                x = (65535 - x.to(torch.int32)).to(torch.uint16)
        elif self.monochrome1:
            x = -x
        if not x.is_contiguous():
            x = x.contiguous()
        feeds = {self.input_names[0]: x}
        if self.noise_channels:
            feeds[self.input_names[1]] = self._noise(noise, x)
        out = self._run(feeds).reshape(shape)
        if self.monochrome1:
            out = (65535 - out.to(torch.int32)).to(torch.uint16) if out.dtype == torch.uint16 \
                else -out
        return to_numpy(out) if from_np else out.to(device)

    def translate_tiled(self, images, overlap: int | None = None, tile_batch: int = 8):
        """Translate an image LARGER than the engine's size: overlapping tiles of the engine's
        size blended with the Translator's window (``medshift_fast.tiling``).

        For a one-step student's engine this is the one-step blend the Translator does; a
        teacher's translate engine holds the whole solver loop, so its tiles' translations are
        blended once at the end (not at every solver stage as ``Translator`` / FrameTranslator
        do): prefer those, or a student engine, for large images.

        Args:
            images: (H, W), (C, H, W) or (B, C, H, W) float images in [-1, 1] (io=float
                engines), H and W at least the engine's size and multiples of 8.
            overlap: tile overlap in pixels (default: a quarter of the engine's size).
            tile_batch: tiles per engine call.
        """
        from ..translate.tiling import plan_grid, tiled_apply

        if self.what != "translate" or self.settings.io != "float":
            raise MedShiftError("translate_tiled needs a translate engine with float I/O")
        x, from_np = as_tensor(images, "images")
        shape, device = tuple(x.shape), x.device
        x = self.check_input(x)  # the whole image, before the first tile
        x = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)) if x.dim() < 4 else x
        s = self.size
        if x.shape[1] != self.in_channels or min(x.shape[-2:]) < s:
            raise MedShiftError(f"translate_tiled: images of {self.in_channels} channel(s) and "
                                f"at least {s}x{s} px, got {shape}")
        f = 8 if s % 8 == 0 else 1
        if x.shape[-2] % f or x.shape[-1] % f:
            raise MedShiftError(f"translate_tiled: image sides must be multiples of {f}, got "
                                f"{shape}; pad or crop first")
        o = (s // 4) // f * f if overlap is None else int(overlap)
        grid = plan_grid(x.shape, s, o, f)
        out = tiled_apply(lambda t: self._translate(t.contiguous()), x.float().cpu(), (), grid,
                          max(1, int(tile_batch)))
        out = out.reshape(shape)
        return to_numpy(out) if from_np else out.to(device)

    def _step(self, x, t, y):
        x, from_np = as_tensor(x, "x")
        device = x.device
        x = self._check_image(x, "step")
        if not x.is_floating_point():
            raise MedShiftError(f"x must be a float tensor, got {x.dtype}")
        b = x.shape[0]
        t = (t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t)))
        y = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y)))
        t = t.to(torch.float32).reshape(-1).expand(b) if t.numel() == 1 else t.to(torch.float32)
        y = y.to(torch.int64).reshape(-1).expand(b) if y.numel() == 1 else y.to(torch.int64)
        if t.shape != (b,) or y.shape != (b,):
            raise MedShiftError(f"t and y must be scalars or ({b},) vectors, got {tuple(t.shape)} "
                                f"and {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise MedShiftError(f"labels must be in 0..{self.num_classes} "
                                f"(null = {self.num_classes})")
        feeds = dict(zip(self.input_names, (x.to(torch.float32).contiguous(),
                                            t.contiguous(), y.contiguous())))
        out = self._run(feeds)
        return to_numpy(out) if from_np else out.to(device)

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class OnnxEngine(Engine):
    """ONNX Runtime session (CUDA provider when present and a GPU is visible, else CPU)."""

    kind = "onnx"

    def __init__(self, path, meta, providers: list[str] | None = None, threads: int = 0,
                 monochrome1: bool = False) -> None:
        super().__init__(path, meta, monochrome1)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MedShiftError("ONNX engines need onnxruntime: pip install "
                                "'medshift_fast[export]'") from exc
        if providers is None:
            avail = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in avail and (p != "CUDAExecutionProvider"
                                            or torch.cuda.is_available())]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001
            hint = "re-export it"
            if self.settings.dtype != "fp32":
                hint = (f"ONNX Runtime's {'/'.join(providers)} may lack {self.settings.dtype} "
                        "kernels for this graph: export fp32 (or fp16), or export with "
                        "--no-verify and run it where such kernels exist")
            raise MedShiftError(f"ONNX Runtime cannot load {self.path} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200]}); {hint}") from exc
        self.providers = self.session.get_providers()

    def _run(self, feeds):
        np_feeds = {k: to_numpy(v) for k, v in feeds.items()}
        try:
            out = self.session.run([self.output_name], np_feeds)[0]
        except Exception as exc:  # noqa: BLE001
            raise MedShiftError(f"ONNX Runtime failed to run {self.path.name} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); an "
                                "fp16/bf16 graph may need a GPU provider") from exc
        t, _ = as_tensor(out, "output")
        return t


class AotiEngine(Engine):
    """AOTInductor package (.pt2) on the device it was compiled for."""

    kind = "aoti"

    def __init__(self, path, meta, device_index: int = -1, monochrome1: bool = False) -> None:
        super().__init__(path, meta, monochrome1)
        from .aoti import load_aoti

        self.device = torch.device(meta.get("device", "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MedShiftError(f"{self.path.name} was compiled for CUDA but no GPU is visible; "
                                "export a CPU package (--device cpu)")
        self.runner = load_aoti(self.path, device_index)

    def _run(self, feeds):
        args = [feeds[n].to(self.device) for n in self.input_names]
        with torch.no_grad():
            out = self.runner(*args)
        return out[0] if isinstance(out, (list, tuple)) else out


class TensorRTEngine(Engine):
    """Serialized TensorRT engine (untested here: TensorRT is not installable on these machines)."""

    kind = "tensorrt"

    def __init__(self, path, meta, monochrome1: bool = False) -> None:
        super().__init__(path, meta, monochrome1)
        from .trt_engine import TensorRTRunner

        self.runner = TensorRTRunner(self.path, meta)

    def _run(self, feeds):
        return self.runner(feeds, self.output_name)


_CLASSES = {"onnx": OnnxEngine, "aoti": AotiEngine, "tensorrt": TensorRTEngine}


def load_engine(path: str | Path, **kwargs) -> Engine:
    """Open an engine written by ``medshift export`` (ONNX, AOTInductor or TensorRT).

    Args:
        path: the engine file (.onnx, .pt2, .plan/.engine/.trt) with its ``FILE.json`` sidecar.
        **kwargs: ``monochrome1=True`` for raw MONOCHROME1 frames (high = dark: inverted on
            the way in and out); runtime options (OnnxEngine: providers, threads; AotiEngine:
            device_index).

    Returns:
        An :class:`Engine`: ``engine(images)`` for translate, ``engine(x, t, y)`` for step.

    Raises:
        MedShiftError: missing/damaged sidecar, wrong format version, checksum mismatch
            (corrupted file), missing runtime, or a file its runtime cannot load.
    """
    path = Path(path)
    meta = read_sidecar(path)
    fmt = meta["engine"]
    if path.suffix.lower() not in SUFFIXES[fmt]:
        raise MedShiftError(f"{path.name} is described as a {fmt} engine but has the suffix "
                            f"{path.suffix!r}; keep the name it was exported with")
    return _CLASSES[fmt](path, meta, **kwargs)
