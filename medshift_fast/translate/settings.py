"""The ONE home of translation defaults: :class:`TranslationSettings`.

Every consumer takes its settings from here or derives them from it: the ``Translator`` (and so
``medshift translate`` / ``evaluate`` / the demo), the CLI flags (``Recipe``: None = the
default shown in ``--help``), ``flow.translate`` and the fused ``flow.sampler`` (which take
every setting explicitly: pass ``**settings.flow_kwargs()``), ``deploy.FrameTranslator`` and
the export settings (``export.graphs.ExportSettings``). ``RECIPE`` and ``DEFAULTS`` are views
of the dataclass's field defaults, never a second copy; ``docs/recipe.md`` shows how the values
were chosen. A test (tests/test_settings.py) fails when a translation default is written
anywhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import MedShiftError, check_field_types
from ..flow.solvers import SOLVERS, nfe

__all__ = ["DECODES", "DEFAULTS", "ENGINES", "METHODS", "MODES", "PRECISIONS", "RECIPE",
           "RECIPE_KEYS", "Recipe", "TAU_SWEEP", "TranslateOptions", "TranslationSettings",
           "resolve"]

METHODS = ("medshift", "sdedit")
MODES = ("eager", "fused", "compiled", "cuda_graph")
#: how a one-step student's network runs (``translate.engine``); the first is the default
ENGINES = ("auto", "eager", "channels_last", "compile", "cuda_graph", "onnx")
#: the network's arithmetic: auto (bf16 where native and checked, ``translate.engine``), fp32, bf16
PRECISIONS = ("auto", "fp32", "bf16")
DECODES = ("ode", "sde")
#: the translation times ``evaluate`` and the demo score by default (the default tau among them)
TAU_SWEEP = (0.3, 0.45, 0.6)


def _finite(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise MedShiftError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v):
        raise MedShiftError(f"{name} must be finite, got {v}")
    return v


def _tile(v) -> int | str | None:
    """A tile request: "auto" (the run's trained tile), None (never tile) or pixels >= 8."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "whole", "off")):
        return None
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        t = int(v.strip()) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        t = None
    if t is None or isinstance(v, bool) or (isinstance(v, float) and v != t) or t < 8:
        raise MedShiftError(f"tile must be 'auto', none or a number of pixels >= 8, got {v!r}")
    return t


@dataclass(frozen=True)
class TranslationSettings:
    """What one translation computes (the Translator's description; JSON round trip).

    The field defaults below are the defaults of the API and of every command (set from the
    measured recipe sweep, docs/recipe.md); nothing else in the package writes them again.

    Attributes:
        source, target: domain labels (0..K-1).
        tau: translation time in [0, 1] (1 = identity, 0 = full inversion to noise).
        guidance_encode, guidance_decode: classifier-free guidance scales of the two legs
            (1 = the plain conditional field, 0 = the unconditional, domain-agnostic field).
        steps: solver steps per leg (over the interval actually integrated).
        solver: euler | midpoint | heun | rk4 | dopri5.
        method: medshift | sdedit.
        decode: ode | sde (medshift: decode with the stochastic bridge).
        sde_noise: diffusion scale of the SDE decode (g(t)^2 = 2 sde_noise (1 - t)^2).
        seed: seed of the noise that sdedit and the SDE decode draw.
        tile: tile side in pixels for images larger than it: "auto" (the tile the run was
            trained on; for a local network, a one-step student with a known receptive field,
            the fastest tile the memory plan allows: ``translate.native``), an int, or None
            (never tile: the whole image at once).
        overlap: tile overlap in pixels (None: for a local network twice its receptive-field
            halo, rounded up to its factor -- exact tiles; otherwise a quarter of the tile).
        noise_scale: scale of a stochastic distilled student's noise maps (None: the
            student's own, ``StudentConfig.noise_scale``; 0: its deterministic member). Any
            other run takes no noise: it must stay None.
    """

    source: int
    target: int
    tau: float = 0.6
    guidance_encode: float = 0.0
    guidance_decode: float = 1.5
    steps: int = 10
    solver: str = "euler"
    method: str = "medshift"
    decode: str = "ode"
    sde_noise: float = 1.0
    seed: int = 0
    tile: int | str | None = "auto"
    overlap: int | None = None
    noise_scale: float | None = None

    def __post_init__(self) -> None:
        tau = _finite("tau", self.tau)
        if not 0.0 <= tau <= 1.0:
            raise MedShiftError(f"tau must be in [0, 1], got {self.tau}")
        object.__setattr__(self, "tau", tau)
        for name in ("guidance_encode", "guidance_decode", "sde_noise"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise MedShiftError(f"steps must be an integer >= 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        if self.solver not in SOLVERS:
            raise MedShiftError(f"unknown solver {self.solver!r}; choose one of "
                                f"{', '.join(SOLVERS)}")
        if self.method not in METHODS:
            raise MedShiftError(f"unknown method {self.method!r}; choose one of "
                                f"{', '.join(METHODS)}")
        if self.decode not in DECODES:
            raise MedShiftError(f"unknown decode {self.decode!r}; choose ode or sde")
        if self.sde_noise < 0:
            raise MedShiftError(f"sde_noise must be >= 0, got {self.sde_noise}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed:
            raise MedShiftError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "tile", _tile(self.tile))
        if self.overlap is not None:
            if isinstance(self.overlap, bool) or int(self.overlap) != self.overlap \
                    or self.overlap < 0:
                raise MedShiftError(f"tile overlap must be an integer >= 0, got {self.overlap!r}")
            object.__setattr__(self, "overlap", int(self.overlap))
        object.__setattr__(self, "source", int(self.source))
        object.__setattr__(self, "target", int(self.target))
        if self.noise_scale is not None:
            v = _finite("noise_scale", self.noise_scale)
            if v < 0:
                raise MedShiftError(f"noise_scale must be >= 0, got {self.noise_scale}")
            object.__setattr__(self, "noise_scale", v)

    def nfe(self) -> int:
        """Network evaluations of one translation (each a 2B forward when guided)."""
        if self.tau == 1.0:
            return 0
        if self.solver == "dopri5":
            raise MedShiftError("dopri5 is adaptive: its number of evaluations is not fixed")
        legs = 1 if self.method == "sdedit" else 2
        return legs * nfe(self.solver, self.steps)

    def flow_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``flow.translate`` / ``flow.sampler.fused_translate``."""
        return {k: getattr(self, k) for k in ("tau", "guidance_encode", "guidance_decode",
                                              "steps", "solver")}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranslationSettings:
        """The settings of ``to_dict`` (unknown keys ignored; missing ones take the default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: every default of TranslationSettings (a view of its fields, not a second copy)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TranslationSettings)
                            if f.default is not dataclasses.MISSING}
#: the recipe: the settings a command's flags override (tau, guidance, solver, decode)
RECIPE_KEYS = ("tau", "guidance_encode", "guidance_decode", "steps", "solver", "decode",
               "sde_noise", "noise_scale")
RECIPE: dict[str, Any] = {k: DEFAULTS[k] for k in RECIPE_KEYS}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Translation settings shared by ``translate``, ``evaluate``, ``demo`` and ``export``.

    A field left at None takes the run's default: ``RECIPE`` for a flow run, the teacher's
    settings for a distilled student (``SHOWN_DEFAULTS`` is what ``--help`` shows).

    Attributes:
        guidance: guidance scale of both legs (overrides guidance_encode and guidance_decode).
        guidance_encode: guidance scale of the encode leg (0 = the unconditional,
            domain-agnostic field; 1 = the plain conditional field).
        guidance_decode: guidance scale of the decode leg.
        steps: solver steps per leg.
        solver: euler | midpoint | heun | rk4 | dopri5.
        decode: ode | sde (decode with the stochastic bridge).
        sde_noise: diffusion scale of the SDE decode.
        noise_scale: scale of a stochastic distilled student's noise maps (0: its
            deterministic member; default: the student's own).
    """

    SHOWN_DEFAULTS: ClassVar[dict[str, Any]] = DEFAULTS

    guidance: float | None = None
    guidance_encode: float | None = None
    guidance_decode: float | None = None
    steps: int | None = None
    solver: str | None = None
    decode: str | None = None
    sde_noise: float | None = None
    noise_scale: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self)  # a wrong-typed value names its field, before any comparison
        if self.guidance is not None:
            g = _finite("guidance", self.guidance)
            object.__setattr__(self, "guidance_encode", g)
            object.__setattr__(self, "guidance_decode", g)
        # every value given is checked now, before any work (labels: by the Translator)
        TranslationSettings(0, 0, 1.0, **resolve(self.recipe(), RECIPE, tau=None))

    def recipe(self) -> dict[str, Any]:
        """The Translator keyword arguments of these settings (tau excluded; None = default)."""
        return {k: getattr(self, k) for k in ("guidance_encode", "guidance_decode", "steps",
                                             "solver", "decode", "sde_noise", "noise_scale")}


def resolve(given: dict[str, Any], defaults: dict[str, Any], **extra) -> dict[str, Any]:
    """``given`` with every None replaced by ``defaults`` (keys of ``extra`` with None dropped)."""
    out = {k: (defaults[k] if v is None else v) for k, v in given.items()}
    for k, v in extra.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@dataclass(frozen=True, kw_only=True)
class TranslateOptions(Recipe):
    """A recipe with its source and target domains.

    Attributes:
        source: source domain name.
        target: target domain name.
    """

    source: str | None = None
    target: str | None = None
