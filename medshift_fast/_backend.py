"""Backend selection: ``auto | cuda | triton | cpp | reference``.

``auto`` picks per call, by device, dtype and shape: the CUDA extension, then Triton (both for CUDA
tensors), then the C++ CPU extension (CPU tensors), then the pure-PyTorch reference. Asking
explicitly for a backend that is not available raises :class:`BackendUnavailableError`; it never
silently falls back.

Nothing here imports Triton or touches CUDA at import time: the capability probes run on first
use and are cached.

Choose a backend with ``medshift_fast.use_backend(name)`` (a context manager, thread- and
task-local), the ``backend=`` argument of an op, or the environment variable
``MEDSHIFT_FAST_BACKEND``.
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
    """The compiled extension ``medshift_fast._C``, or None when it was not built."""
    import torch  # noqa: F401  (libc10 must be loaded before the extension)

    try:
        return importlib.import_module("medshift_fast._C")
    except ImportError:
        return None


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
        requested: an explicit ``backend=`` argument; None means the context's backend.

    Returns:
        A concrete backend name (never ``auto``).

    Raises:
        BackendUnavailableError: an explicitly requested backend is missing or cannot run these
            inputs.
    """
    name = _check_name(requested) if requested is not None else current_backend()
    supported = tuple(supported)
    if name == "auto":
        for cand in _AUTO_ORDER:
            # Under auto, interpreted Triton on the CPU is never picked: it is a test mode.
            if cand == "triton" and device_type != "cuda":
                continue
            if cand in supported and is_available(cand) and device_ok(cand, device_type):
                return cand
        return "reference"
    if not is_available(name):
        raise BackendUnavailableError(
            f"{op}: backend {name!r} was requested but is not available ({why_unavailable(name)})"
        )
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
