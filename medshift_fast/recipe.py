"""The translation settings shared by every consumer: ``RECIPE`` (the measured defaults of the API
and of every command; docs/recipe.md), ``TranslationSettings`` (one translation's fixed settings,
validated), ``Recipe`` / ``TranslateOptions`` (the CLI-facing options, None = the run's default),
``resolve`` and the uint16 pixel conversions. ``translator.Translator`` runs them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import MedShiftError
from .flow.solvers import SOLVERS, nfe

__all__ = ["DECODES", "METHODS", "MODES", "RECIPE", "Recipe", "TranslateOptions",
           "TranslationSettings", "resolve", "uint16_to_unit", "unit_to_uint16"]

METHODS = ("medshift", "sdedit")
MODES = ("eager", "fused", "compiled", "cuda_graph")
DECODES = ("ode", "sde")

# The defaults of the API and of every command (set from the measured recipe sweep).
RECIPE: dict[str, Any] = {
    "tau": 0.6,
    "guidance_encode": 0.0,
    "guidance_decode": 1.5,
    "steps": 10,
    "solver": "euler",
    "decode": "ode",
    "sde_noise": 1.0,
}

U16_MAX = 65535.0


def uint16_to_unit(u: torch.Tensor) -> torch.Tensor:
    """Raw 16-bit counts -> [-1, 1] float32 (x = u * 2/65535 - 1, as ``data.read_image``)."""
    return u.to(torch.float32) * (2.0 / U16_MAX) - 1.0


def unit_to_uint16(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint16 counts, rint((clamp(y) + 1) * 32767.5) (round half to even)."""
    return torch.round((y.clamp(-1.0, 1.0) + 1.0) * (U16_MAX / 2.0)).to(torch.uint16)


def _finite(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise MedShiftError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v):
        raise MedShiftError(f"{name} must be finite, got {v}")
    return v


@dataclass(frozen=True)
class TranslationSettings:
    """What one translation computes (the Translator's description; JSON round trip).

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
    """

    source: int
    target: int
    tau: float = RECIPE["tau"]
    guidance_encode: float = RECIPE["guidance_encode"]
    guidance_decode: float = RECIPE["guidance_decode"]
    steps: int = RECIPE["steps"]
    solver: str = RECIPE["solver"]
    method: str = "medshift"
    decode: str = RECIPE["decode"]
    sde_noise: float = RECIPE["sde_noise"]
    seed: int = 0

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
        object.__setattr__(self, "source", int(self.source))
        object.__setattr__(self, "target", int(self.target))

    def nfe(self) -> int:
        """Network evaluations of one translation (each a 2B forward when guided)."""
        if self.tau == 1.0:
            return 0
        if self.solver == "dopri5":
            raise MedShiftError("dopri5 is adaptive: its number of evaluations is not fixed")
        legs = 1 if self.method == "sdedit" else 2
        return legs * nfe(self.solver, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranslationSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    """

    SHOWN_DEFAULTS: ClassVar[dict[str, Any]] = RECIPE

    guidance: float | None = None
    guidance_encode: float | None = None
    guidance_decode: float | None = None
    steps: int | None = None
    solver: str | None = None
    decode: str | None = None
    sde_noise: float | None = None

    def __post_init__(self) -> None:
        if self.guidance is not None:
            g = _finite("guidance", self.guidance)
            object.__setattr__(self, "guidance_encode", g)
            object.__setattr__(self, "guidance_decode", g)
        # every value given is checked now, before any work (labels: by the Translator)
        TranslationSettings(0, 0, 1.0, **resolve(self.recipe(), RECIPE, tau=None))

    def recipe(self) -> dict[str, Any]:
        """The Translator keyword arguments of these settings (tau excluded; None = default)."""
        return {k: getattr(self, k) for k in ("guidance_encode", "guidance_decode", "steps",
                                             "solver", "decode", "sde_noise")}


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
