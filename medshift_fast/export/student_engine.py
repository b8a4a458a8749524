"""A one-step student through ONNX Runtime: the ``onnx`` engine of the Translator.

``Translator(..., engine="onnx")`` and ``medshift translate --engine onnx`` run the student's
tiles through the EXPORTED engine: the student's translate graph (``graphs.TranslateModule``:
the pixel pipeline, clamp included) exported with a free height and width (``dynamic``; any
multiple of the network's factor, so every tile shape and every whole image of one folder use
one file), with a stochastic student's noise maps as its second input. It is exported once into
a cache and reused:

    $MEDSHIFT_CACHE (default $XDG_CACHE_HOME/medshift_fast or ~/.cache/medshift_fast)
        /engines/<key>.onnx (+ .onnx.json sidecar)

``key`` hashes the weights as loaded (sha256 of every tensor), the export settings (source,
target, tau, dtype, I/O, dynamic), the noise scale and the torch / onnx versions and the
engine format: another run, another setting or another exporter gets its own file. Before a
file enters the cache it is verified against eager PyTorch at the traced size AND at a
non-square size (``VERIFY_TOL``: issue 30 asks for 1e-4); a file that fails is not kept. A cached
file is checked again on every load (the sidecar's SHA-256 of the file, ``load_engine``).
Importing this module provides the engine to ``translate.engine`` (``provide``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..translate import engine as E
from .sidecar import ENGINE_FORMAT_VERSION, sidecar_path

__all__ = ["VERIFY_TOL", "OnnxStudentEngine", "cache_dir", "engine_key", "onnx_student_engine"]

#: max |ONNX Runtime - eager| of the verified translations (fp32, [-1, 1] images)
VERIFY_TOL = 1e-4
TRACE_SIDE = 64  # the traced (and first verified) side, in multiples of the network's factor


def cache_dir() -> Path:
    """The engine cache: $MEDSHIFT_CACHE/engines, else the user's cache folder."""
    root = os.environ.get("MEDSHIFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "medshift_fast")
    return Path(root) / "engines"


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def engine_key(translator, settings) -> str:
    """The cache key of ``translator``'s student exported with ``settings`` (module doc)."""
    import onnx

    st = translator.model
    d = {"weights": _weights_hash(st), "settings": settings.to_dict(),
         "noise_scale": float(getattr(st.config, "noise_scale", 0.0)),
         "torch": torch.__version__, "onnx": onnx.__version__, "format": ENGINE_FORMAT_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


class OnnxStudentEngine(E.StudentEngine):
    """Tiles through an ONNX Runtime session of the cached engine (``translate.engine`` API).

    Args:
        engine: the loaded ``OnnxEngine`` (dynamic, float I/O).
        student: the student it was exported from (noise maps, factor).
        tau: what the graph bakes in (a call asking for another is refused).
    """

    name = "onnx"

    def __init__(self, engine, student, tau: float) -> None:
        self.onnx, self.student, self.bf16, self.channels_last = engine, student, False, False
        self.device = torch.device("cpu")
        self.tau = float(tau)

    def translate(self, z, tau, y_src, y_tgt, noise=None, noise_scale=None):
        """The engine's translation of model-space tiles ``z`` (B, C, h, w), float32, clamped
        (tau, the labels and the noise scale are the translator's, baked into the graph)."""
        if abs(float(tau) - self.tau) > 1e-9:
            raise MedShiftError(f"this ONNX engine was exported for tau {self.tau:g}, not "
                                f"{float(tau):g}; build the translator's engine again")
        z = z.float().contiguous()
        if noise is None or not self.onnx.noise_channels:
            return self.onnx(z)
        return self.onnx(z, noise.float().contiguous())

    __call__ = translate

    def describe(self) -> str:
        """``onnx, fp32 (<file>)``."""
        return f"onnx, fp32 ({self.onnx.path.name}, {'/'.join(self.onnx.providers)})"


def _available(device: torch.device) -> bool:
    if torch.device(device).type != "cpu":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_student_engine(translator, bf16: bool = False, cache: str | Path | None = None,
                        threads: int | None = None) -> OnnxStudentEngine:
    """The ``onnx`` engine of ``translator``'s one-step student, exported into the cache once.

    Args:
        translator: a ``Translator`` of a pixel-space one-step student, on the CPU.
        bf16: must be False (ONNX Runtime's CPU provider has no bf16 convolutions).
        cache: the cache folder (default ``cache_dir()``).
        threads: ONNX Runtime intra-op threads (default: torch's, ``torch.get_num_threads``;
            ``medshift translate`` sets it from ``translate.engine.machine_threads``).

    Raises:
        MedShiftError: not a pixel-space student on the CPU, bf16, onnxruntime missing, or an
            export that does not match eager within ``VERIFY_TOL``.
    """
    from .api import export_engine
    from .engines import load_engine
    from .graphs import ExportSettings
    from .verify import verify_engine

    if bf16:
        raise MedShiftError("engine 'onnx' runs fp32 (ONNX Runtime's CPU provider has no bf16 "
                            "convolutions); use --precision fp32, or --engine channels_last "
                            "for bf16")
    run = translator.run
    if run.kind != "student" or run.latent or translator.device.type != "cpu":
        raise MedShiftError("engine 'onnx' runs a pixel-space one-step student on the CPU; use "
                            "--engine eager (or channels_last) for this run")
    if not _available(translator.device):
        raise MedShiftError("engine 'onnx' needs onnxruntime: pip install "
                            "'medshift_fast[export]', or use --engine channels_last")
    st, f = translator.model, int(translator.model.down_factor)
    side = TRACE_SIDE // f * f or f
    settings = ExportSettings.from_translator(translator, size=side, batch=1, dtype="fp32",
                                              io="float", dynamic=True)
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{engine_key(translator, settings)}.onnx"
    threads = torch.get_num_threads() if threads is None else int(threads)
    if not sidecar_path(path).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".export-"))
        try:
            rep = export_engine(run, "onnx", tmp / path.name, settings, domains=run.domains,
                                verify=True, tolerance=VERIFY_TOL,
                                extra_meta={"checkpoint": str(run.path), "cache_key": path.stem})
            odd = verify_engine(load_engine(rep.path, threads=threads), st, settings,
                                tolerance=VERIFY_TOL, batch=2, seed=2,
                                size=(2 * side + f, side + 3 * f))
            for r in (rep.verify, odd):
                if r is None or not r.ok:
                    raise MedShiftError(f"the ONNX export of this student does not match eager "
                                        f"PyTorch ({r}); use --engine channels_last")
            os.replace(rep.path, path)  # the engine file first, its sidecar (the marker) last
            os.replace(rep.sidecar, sidecar_path(path))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return OnnxStudentEngine(load_engine(path, threads=threads), st, translator.settings.tau)


onnx_student_engine.available = _available  # type: ignore[attr-defined]
E.provide("onnx", onnx_student_engine)
