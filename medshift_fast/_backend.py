"""Backend selection: ``auto | cuda | triton | cpp | reference``.

``auto`` picks per call, by device, dtype and shape: the CUDA extension, then Triton (both for CUDA
tensors), then the C++ CPU extension (CPU tensors), then the pure-PyTorch reference. Asking
explicitly for a backend that is not available raises :class:`BackendUnavailableError`; it never
silently falls back.

Nothing here imports Triton or touches CUDA at import time: the capability probes run on first
use and are cached.

Choose a backend with the ``backend=`` argument of one op call (an explicit request: an op
that lacks it raises), or for a whole pipeline with ``medshift_fast.use_backend(name)`` (a
context manager, thread- and task-local) or the environment variable ``MEDSHIFT_FAST_BACKEND``:
that is a *preference* -- ops that implement the backend for their inputs use it, the others
resolve by ``auto`` -- which raises only when the named backend is not available on this
machine at all. ``medshift env`` prints which backend every op resolves to.

The compiled extension's state (built, not built and why, built from older sources) is
recorded by setup.py in ``_C_build.json`` beside the package; ``extension_status()`` reads it
and a stale extension is reported once at first use.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from types import ModuleType

from .errors import BackendUnavailableError, MedShiftError

BACKENDS = ("auto", "cuda", "triton", "cpp", "reference")
_AUTO_ORDER = ("cuda", "triton", "cpp", "reference")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "medshift_fast_backend", default=None
)


def _check_name(name: str) -> str:
    name = str(name).lower()
    if name not in BACKENDS:
        raise MedShiftError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def current_backend() -> str:
    """The backend requested for this context: use_backend() > MEDSHIFT_FAST_BACKEND > 'auto'.

    Under ``torch.compile`` the value is read once, at trace time, and baked into the graph as a
    constant (Dynamo cannot trace ``ContextVar.get``; without this every op call would break the
    graph). A compiled module therefore keeps the backend that was current when it was traced.
    """
    return _current_backend()


def _current_backend() -> str:
    ctx = _current.get()
    if ctx is not None:
        return ctx
    return _check_name(os.environ.get("MEDSHIFT_FAST_BACKEND", "auto") or "auto")


# What ``torch.compiler.assume_constant_result`` sets (spelled out so that importing this module
# does not import torch._dynamo): Dynamo calls the function at trace time and bakes the result in.
_current_backend._dynamo_marked_constant = True  # type: ignore[attr-defined]


def check_preference() -> str:
    """The preferred backend, raising now (before any work) when it is unknown or unavailable."""
    name = current_backend()
    if name != "auto" and not is_available(name):
        raise BackendUnavailableError(
            f"MEDSHIFT_FAST_BACKEND / use_backend prefers {name!r}, which is not available here "
            f"({why_unavailable(name)}); unset it or choose one of "
            f"{', '.join(n for n in BACKENDS if is_available(n))}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the enclosed ops with backend ``name`` (validated now, availability checked per op)."""
    name = _check_name(name)
    if name != "auto" and not is_available(name):
        raise BackendUnavailableError(
            f"backend {name!r} is not available here ({why_unavailable(name)})"
        )
    token = _current.set(name)
    try:
        yield name
    finally:
        _current.reset(token)


# ---------------------------------------------------------------------------------------- probes
@functools.cache
def extension() -> ModuleType | None:
    """The compiled extension ``medshift_fast._C``, or None when it was not built.

    An extension built from older C++/CUDA sources than the checkout's is still used (its ops
    are checked one by one), but reported once here as a warning and by ``medshift env``.
    """
    import torch  # noqa: F401  (libc10 must be loaded before the extension)

    try:
        mod = importlib.import_module("medshift_fast._C")
    except ImportError:
        return None
    st = extension_status()
    if st["state"] == "stale":
        import warnings

        warnings.warn(f"medshift_fast: {st['detail']}", RuntimeWarning, stacklevel=2)
    return mod


_PKG = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(_PKG, "_C_build.json")


def sources_digest(root: str) -> str | None:
    """SHA-256 over the extension's C++/CUDA sources under ``root/csrc`` (None without them)."""
    import hashlib

    csrc = os.path.join(root, "csrc")
    if not os.path.isdir(csrc):
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(csrc):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith((".cpp", ".cu", ".h", ".cuh", ".hpp")) and "tests" not in dirpath:
                path = os.path.join(dirpath, f)
                h.update(os.path.relpath(path, csrc).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


@functools.cache
def extension_status() -> dict[str, str]:
    """{"state": built | not built | stale | unknown, "detail": one line for people}."""
    import glob
    import json

    info: dict = {}
    try:
        with open(BUILD_INFO) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        pass
    have_so = bool(glob.glob(os.path.join(_PKG, "_C*.so")) or glob.glob(os.path.join(_PKG,
                                                                                     "_C*.pyd")))
    if not have_so:
        why = info.get("error") or ("built with MEDSHIFT_FAST_BUILD_EXT=0"
                                    if info.get("skipped") else "no build record")
        return {"state": "not built", "detail": f"C++ extension: not built - {why}; the "
                "pure-PyTorch reference runs instead (rebuild: make ext)"}
    now = sources_digest(os.path.dirname(_PKG))
    built = info.get("sources_sha256")
    if now is not None and built is not None and now != built:
        return {"state": "stale", "detail": "C++ extension: built from older csrc/ sources than "
                "this checkout's; ops it lacks fall back to the reference - rebuild it with "
                "`make ext`"}
    cuda = " with CUDA kernels" if info.get("cuda") else ""
    if built is None:
        return {"state": "unknown", "detail": f"C++ extension: built{cuda} (no build record: "
                "cannot tell whether it matches the sources)"}
    return {"state": "built", "detail": f"C++ extension: built{cuda}, matches the sources"}


@functools.cache
def _ext_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and getattr(ext, "with_cuda", lambda: False)())


@functools.cache
def cuda_device_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def is_available(name: str) -> bool:
    """Whether backend ``name`` can run at all on this machine (for some device)."""
    name = _check_name(name)
    if name in ("auto", "reference"):
        return True
    if name == "cpp":
        return extension() is not None
    if name == "cuda":
        return _ext_has_cuda() and cuda_device_available()
    if name == "triton":
        return triton_importable() and (cuda_device_available() or triton_interpret())
    return False  # pragma: no cover


def why_unavailable(name: str) -> str:
    if name == "cpp":
        return (
            "the C++ extension medshift_fast._C is not built; run `make ext` or reinstall with "
            "MEDSHIFT_FAST_BUILD_EXT=1"
        )
    if name == "cuda":
        if not _ext_has_cuda():
            return (
                "the extension was built without CUDA (needs a CUDA torch and nvcc at build time)"
            )
        return "no CUDA device is visible"
    if name == "triton":
        if not triton_importable():
            return "triton is not installed (pip install triton)"
        return "no CUDA device and TRITON_INTERPRET is not set"
    return "unknown"


def available_backends() -> dict[str, bool]:
    return {name: is_available(name) for name in _AUTO_ORDER}


def device_ok(name: str, device_type: str) -> bool:
    """Whether backend ``name`` can run on tensors of ``device_type``."""
    if name == "reference":
        return True
    if name == "cpp":
        return device_type == "cpu"
    if name == "cuda":
        return device_type == "cuda"
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and triton_interpret())
    return False


def _auto(device_type: str, supported: tuple[str, ...]) -> str:
    for cand in _AUTO_ORDER:
        # Under auto, interpreted Triton on the CPU is never picked: it is a test mode.
        if cand == "triton" and device_type != "cuda":
            continue
        if cand in supported and is_available(cand) and device_ok(cand, device_type):
            return cand
    return "reference"


def resolve(
    op: str,
    device_type: str,
    supported: Iterable[str],
    requested: str | None = None,
) -> str:
    """Pick the backend for one call of ``op``.

    Args:
        op: op name, for error messages.
        device_type: ``tensor.device.type`` of the inputs.
        supported: backends that implement ``op`` for these inputs (dtype/shape already checked by
            the caller), in any order.
        requested: an explicit ``backend=`` argument; None means the context's preference
            (``use_backend`` / ``MEDSHIFT_FAST_BACKEND``), which falls back to ``auto`` for an op
            that does not implement it for these inputs.

    Returns:
        A concrete backend name (never ``auto``).

    Raises:
        BackendUnavailableError: an explicitly requested backend is missing or cannot run these
            inputs, or the preferred backend is not available on this machine at all.
    """
    explicit = requested is not None
    name = _check_name(requested) if explicit else current_backend()
    supported = tuple(supported)
    if name == "auto":
        return _auto(device_type, supported)
    if not is_available(name):
        how = "was requested" if explicit else "is preferred (use_backend / MEDSHIFT_FAST_BACKEND)"
        raise BackendUnavailableError(
            f"{op}: backend {name!r} {how} but is not available ({why_unavailable(name)})"
        )
    if not explicit and (name not in supported or not device_ok(name, device_type)):
        return _auto(device_type, supported)  # a preference: this op resolves by auto
    if name not in supported:
        raise BackendUnavailableError(
            f"{op}: backend {name!r} does not implement these inputs; supported here: "
            f"{', '.join(supported) or 'none'}"
        )
    if not device_ok(name, device_type):
        raise BackendUnavailableError(
            f"{op}: backend {name!r} cannot run tensors on device {device_type!r}"
        )
    return name


def import_kernels(module: str) -> ModuleType:
    """Import ``medshift_fast.kernels.<module>`` (Triton), lazily."""
    return importlib.import_module(f"medshift_fast.kernels.{module}")
