"""The one home of translation: settings, the Translator, native resolution, folders of files.

* ``settings``   -- :class:`TranslationSettings`, the ONLY place translation defaults live
  (``DEFAULTS`` / ``RECIPE`` are views of it); ``Recipe`` / ``TranslateOptions``: CLI options.
* ``translator`` -- :class:`Translator`: settings + execution mode + the run's codec + pixel
  I/O; every consumer (translate, evaluate, demo, FrameTranslator, export) translates through it.
* ``native``     -- :class:`NativePlanner`: the memory plan, tiles and input checks a
  Translator holds; ``tiling`` (windows, grids, tiled views), ``memory`` (budgets),
  ``learned`` (what a run learned: pixel scale, intensity rule).
* ``engine``     -- how a one-step student's network runs (eager, channels_last, compile,
  cuda_graph, onnx through the export layer; bf16 where native and checked; ``auto``).
* ``files``      -- ``medshift translate`` on files and folders; ``manifest`` its per-run CSV.

Layering: this package sits above ``run``, ``flow``, ``models``, ``data`` and ``ops`` and below
``eval``, ``export``, ``deploy``, ``train``, ``demo`` and ``cli``; nothing below imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .settings import (
    DECODES,
    DEFAULTS,
    ENGINES,
    METHODS,
    MODES,
    PRECISIONS,
    RECIPE,
    RECIPE_KEYS,
    TAU_SWEEP,
    Recipe,
    TranslateOptions,
    TranslationSettings,
    resolve,
)
from .translator import (
    DEFAULT,
    MAX_ASPECT,
    Translator,
    pipeline,
    translate_model_space,
    uint16_to_unit,
    unit_to_uint16,
)

__all__ = ["DECODES", "DEFAULT", "DEFAULTS", "ENGINES", "MAX_ASPECT", "METHODS", "MODES",
           "PRECISIONS", "RECIPE", "RECIPE_KEYS", "TAU_SWEEP", "Recipe", "TranslateConfig",
           "TranslateOptions",
           "TranslateSummary", "TranslationSettings", "Translator", "pipeline", "resolve",
           "translate_files", "translate_model_space", "uint16_to_unit", "unit_to_uint16"]

# folders of files: imported on first use (they pull in the image readers and writers)
_LAZY = {"TranslateConfig": "files", "TranslateSummary": "files", "translate_files": "files"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'medshift_fast.translate' has no attribute {name!r}")
