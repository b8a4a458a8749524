"""What a translation is, below the ``Translator`` object: the pixel <-> uint16 conversions, the
NumPy <-> tensor ones of every array-taking entry point (:func:`as_tensor`, :func:`to_numpy`,
:func:`as_image_batch`), one translation in model space (a one-call student or the flow with
its settings), and :func:`pipeline` (encode with the run's codec, translate, decode, clamp).
The ``Translator`` (:mod:`.translator`) holds the settings, the execution mode and the tiling
around it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MedShiftError
from .settings import TranslationSettings

__all__ = ["DEFAULT", "as_image_batch", "as_tensor", "pipeline", "to_numpy",
           "translate_model_space", "uint16_to_unit", "unit_to_uint16"]

U16_MAX = 65535.0
#: what to do with float pixels outside [-1, 1] (the Translator's one-line refusal)
UNIT_FIX = ("map 8-bit values v with v / 127.5 - 1, pass raw 16-bit counts as uint16, or read "
            "files with medshift_fast.read_image")


class _Default:
    """The "take it from ``TranslationSettings``" marker of arguments where None has a meaning."""

    def __repr__(self) -> str:
        return "DEFAULT"


#: pass (or leave) ``tile=DEFAULT`` for the settings' default tile; None means "never tile"
DEFAULT = _Default()


def uint16_to_unit(u: torch.Tensor) -> torch.Tensor:
    """Raw 16-bit counts -> [-1, 1] float32 (x = u * 2/65535 - 1, as ``data.read_image``)."""
    return u.to(torch.float32) * (2.0 / U16_MAX) - 1.0


def unit_to_uint16(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint16 counts, rint((clamp(y) + 1) * 32767.5) (round half to even)."""
    return torch.round((y.clamp(-1.0, 1.0) + 1.0) * (U16_MAX / 2.0)).to(torch.uint16)


def as_tensor(a: Any, what: str) -> tuple[torch.Tensor, bool]:
    """A tensor or NumPy array -> (tensor, came_from_numpy); uint16 arrays stay uint16
    (``torch.from_numpy`` has no uint16 on every version)."""
    if isinstance(a, torch.Tensor):
        return a, False
    if isinstance(a, np.ndarray):
        if a.dtype == np.uint16:
            return torch.from_numpy(a.astype(np.int32)).to(torch.uint16), True
        return torch.from_numpy(np.ascontiguousarray(a)), True
    raise MedShiftError(f"{what} must be a torch tensor or a NumPy array, got {type(a).__name__}")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor -> a NumPy array of its dtype (uint16 included), on the CPU."""
    t = t.detach().cpu()
    if t.dtype == torch.uint16:
        return t.to(torch.int32).numpy().astype(np.uint16)
    return t.numpy()


def as_image_batch(images: Any, channels: int, who: str = "Translator"
                   ) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """(H, W), (C, H, W) or (B, C, H, W) images -- float in [-1, 1] or uint16 raw counts, a
    tensor or a NumPy array -- -> (a (B, C, H, W) float batch, ``back``): ``back(y)`` gives a
    translated batch the input's kind again (its shape, float dtype or uint16 counts, NumPy or
    tensor, device).

    Raises:
        MedShiftError: another type, rank, channel count, an empty batch, an integer dtype that
            is not uint16.
    """
    t, is_np = as_tensor(images, f"{who}: images")
    shape, device = tuple(t.shape), t.device
    if not 2 <= t.dim() <= 4:
        raise MedShiftError(f"{who}: expected (H, W), (C, H, W) or (B, C, H, W) images, got "
                            f"shape {shape}")
    x = t.reshape((1,) * (4 - t.dim()) + shape)
    if x.shape[1] != channels or x.shape[0] == 0:
        raise MedShiftError(f"{who}: expected {channels} channel(s) and at least one image, got "
                            f"shape {shape}")
    u16 = x.dtype == torch.uint16
    if u16:
        x = uint16_to_unit(x)
    elif not x.is_floating_point():
        raise MedShiftError(f"{who}: images must be float in [-1, 1] or uint16 raw counts, got "
                            f"{x.dtype}")

    def back(y: torch.Tensor) -> Any:
        out = (unit_to_uint16(y) if u16 else y.to(t.dtype)).reshape(shape)
        return to_numpy(out) if is_np else out.to(device)

    return x, back


def _generator(s: TranslationSettings) -> torch.Generator:
    return torch.Generator().manual_seed(int(s.seed))


def translate_model_space(model: nn.Module, z: torch.Tensor, s: TranslationSettings,
                          generator: torch.Generator | None = None,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
    """The flow part of a translation on model-space tensors (no input checks: traceable).

    Args:
        model: the run's network (velocity field, or a distilled student).
        z: (B, C, h, w) model-space source images.
        s: the settings.
        generator: CPU generator for sdedit / SDE noise (default: seeded from ``s.seed``).
        noise: a stochastic student's standard-normal noise maps (B, N, h, w) (default: drawn
            from ``generator``; given by an exported graph, which takes them as an input).
    """
    from ..flow.translate import sde_translate_unchecked, sdedit, translate_unchecked

    b = z.shape[0]
    y_src = torch.full((b,), s.source, dtype=torch.long, device=z.device)
    y_tgt = torch.full((b,), s.target, dtype=torch.long, device=z.device)
    if getattr(model, "is_student", False):
        if noise is None and getattr(model, "stochastic", False) and s.noise_scale != 0:
            noise = model.draw_noise(tuple(z.shape), generator or _generator(s), z.device,
                                     z.dtype)
        return model.translate(z, s.tau, y_src, y_tgt, noise, s.noise_scale)
    if s.method == "sdedit":
        return sdedit(model, z, y_tgt, tau=s.tau, guidance=s.guidance_decode, steps=s.steps,
                      solver=s.solver, generator=generator or _generator(s))
    if s.decode == "sde":
        return sde_translate_unchecked(model, z, y_src, y_tgt, s.tau, s.guidance_encode,
                                       s.guidance_decode, s.steps, s.solver, s.sde_noise,
                                       generator or _generator(s))
    return translate_unchecked(model, z, y_src, y_tgt, s.tau, s.guidance_encode,
                               s.guidance_decode, s.steps, s.solver)


def pipeline(model: nn.Module, codec, x: torch.Tensor, s: TranslationSettings,
             dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """The whole translation on pixels: codec encode -> flow part -> codec decode -> clamp.

    Args:
        model: the run's network; codec: its codec (None or a pixel codec in pixel mode).
        x: (B, C, H, W) float pixels in [-1, 1].
        s: the settings.
        dtype: compute dtype of the network and the ODE state (default: x's).
        generator: noise generator (sdedit / SDE decode / a stochastic student's maps).
        noise: a stochastic student's noise maps (``translate_model_space``).

    Returns:
        (B, C, H, W) float32 pixels in [-1, 1].
    """
    x = x.to(torch.float32)
    z = codec.encode(x) if codec is not None else x
    z = translate_model_space(model, z.to(dtype or z.dtype), s, generator, noise)
    y = z.to(torch.float32)
    if codec is not None:
        y = codec.decode(y)
    return y.clamp(-1.0, 1.0)
