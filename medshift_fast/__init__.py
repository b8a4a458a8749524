"""medshift_fast: unpaired X-ray domain translation with one class-conditional flow-matching /
Schrödinger-bridge model (MedShift), with fused kernels and deployable exports.

Importing this package never imports Triton or touches CUDA; heavy submodules load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._backend import available_backends, current_backend, use_backend
from .errors import BackendUnavailableError, MedShiftError

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "MedShiftError",
    "__version__",
    "available_backends",
    "current_backend",
    "use_backend",
    "ops",
    "flow",
    "models",
    "data",
    "train",
    "eval",
    "export",
    "deploy",
]

_LAZY = {"ops", "flow", "models", "data", "train", "eval", "export", "deploy", "cli"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'medshift_fast' has no attribute {name!r}")
