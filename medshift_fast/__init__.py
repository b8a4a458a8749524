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
    "translate",
    "load_run",
    "LoadedRun",
    "Translator",
    "TranslationSettings",
    "RECIPE",
    "FrameTranslator",
    "load_engine",
]

_LAZY = {"ops", "flow", "models", "data", "train", "eval", "export", "deploy", "cli", "run",
         "translate", "demo"}
# the everyday names, importable from the top level without loading torch-heavy modules early
_NAMES = {"load_run": "run", "LoadedRun": "run", "Translator": "translate",
          "TranslationSettings": "translate", "RECIPE": "translate",
          "FrameTranslator": "deploy", "load_engine": "deploy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'medshift_fast' has no attribute {name!r}")
