"""MedShift translation ("implicit conditional transport") and sampling.

Encode: integrate dx/dt = v(x, t, y_src) backwards from t = 1 (the source image) to t = tau.
Decode: integrate forwards from tau to 1 with y_tgt. tau = 1 returns the input unchanged;
tau = 0 is full inversion to the shared noise latent. Larger tau keeps more structure, smaller
tau gives more realism. Guidance scales for encode and decode are separate.

These functions take every setting explicitly (keyword-only, no defaults): the defaults live
in ``translate.settings.TranslationSettings`` alone -- pass ``**settings.flow_kwargs()``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MedShiftError
from .guidance import make_field
from .paths import sb_sample_xt
from .solvers import check_solver, integrate, integrate_sde, randn


def _labels(y, b: int, device, num_classes: int, what: str) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        y = y.to(device=device, dtype=torch.long).reshape(-1)
        if y.numel() == 1:
            y = y.expand(b)
    else:
        y = torch.full((b,), int(y), device=device, dtype=torch.long)
    if y.numel() != b:
        raise MedShiftError(f"{what}: expected {b} labels, got {y.numel()}")
    if bool(((y < 0) | (y > num_classes)).any()):
        raise MedShiftError(f"{what}: label out of range 0..{num_classes} (null = {num_classes})")
    return y


def _check_x(model: nn.Module, x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise MedShiftError(f"{what}: images must be (B, C, H, W), got {tuple(x.shape)}")
    c = getattr(model, "in_channels", x.shape[1])
    if x.shape[1] != c:
        raise MedShiftError(f"{what}: model expects {c} channel(s), images have {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise MedShiftError(f"{what}: input contains NaN or Inf")


@torch.no_grad()
def encode(model, x, source, *, tau, guidance, steps, solver, **kw):
    """x (B, C, H, W) at t = 1 -> latent at t = tau with the source label."""
    _check_x(model, x, "encode")
    y = _labels(source, x.shape[0], x.device, model.num_classes, "encode")
    return integrate(
        make_field(model, y, guidance), x, 1.0, float(tau), steps, solver, guidance, **kw
    )


@torch.no_grad()
def decode(model, z, target, *, tau, guidance, steps, solver, **kw):
    """Latent z at t = tau -> image at t = 1 with the target label."""
    y = _labels(target, z.shape[0], z.device, model.num_classes, "decode")
    return integrate(
        make_field(model, y, guidance), z, float(tau), 1.0, steps, solver, guidance, **kw
    )


@torch.no_grad()
def translate(
    model: nn.Module,
    x: torch.Tensor,
    source,
    target,
    *,
    tau: float,
    guidance_encode: float,
    guidance_decode: float,
    steps: int,
    solver: str,
    **solver_kw,
) -> torch.Tensor:
    """Translate model-space tensors from the source domain to the target domain.

    Pixel images go through :class:`medshift_fast.translate.Translator`, which adds the run's
    codec, pixel I/O and the fast execution modes around this function.

    Args:
        model: class-conditional velocity field ``model(x, t, y)``.
        x: (B, C, H, W) source images in model space ([-1, 1] pixels or latents).
        source, target: domain label(s): int or (B,) tensor.
        tau: translation time in [0, 1].
        guidance_encode, guidance_decode: CFG scales for the two legs.
        steps: steps per leg (over the interval actually integrated).
        solver: euler | midpoint | heun | rk4 | dopri5.

    Returns:
        (B, C, H, W) translated images.
    """
    check_solver(solver)
    if not 0.0 <= float(tau) <= 1.0:
        raise MedShiftError(f"translate: tau must be in [0, 1], got {tau}")
    _check_x(model, x, "translate")
    b, k = x.shape[0], model.num_classes
    y_src = _labels(source, b, x.device, k, "translate")
    y_tgt = _labels(target, b, x.device, k, "translate")
    return translate_unchecked(model, x, y_src, y_tgt, tau, guidance_encode, guidance_decode,
                               steps, solver, **solver_kw)


def translate_unchecked(model, x, y_src, y_tgt, tau, guidance_encode, guidance_decode, steps,
                        solver, **solver_kw) -> torch.Tensor:
    """``translate`` without input checks (traceable: no data-dependent control flow).

    Args:
        y_src, y_tgt: (B,) int64 label tensors on x's device.
    """
    tau = float(tau)
    if tau == 1.0:
        return x.clone()
    z = integrate(make_field(model, y_src, guidance_encode), x, 1.0, tau, steps, solver,
                  guidance_encode, **solver_kw)
    return integrate(make_field(model, y_tgt, guidance_decode), z, tau, 1.0, steps, solver,
                     guidance_decode, **solver_kw)


@torch.no_grad()
def sde_decode(model, z, y_tgt, tau, guidance, steps, noise, generator=None) -> torch.Tensor:
    """Decode tau -> 1 with the stochastic bridge (``solvers.integrate_sde``) instead of the ODE.

    Args:
        y_tgt: (B,) target labels; guidance: decode guidance scale; noise: the SDE's diffusion
            scale (0 = the Euler ODE decode); generator: CPU generator of the injected noise.
    """
    return integrate_sde(make_field(model, y_tgt, guidance), z, float(tau), 1.0, steps, noise,
                         guidance, generator)


def sde_translate_unchecked(model, x, y_src, y_tgt, tau, guidance_encode, guidance_decode,
                            steps, solver, noise, generator=None) -> torch.Tensor:
    """ODE encode 1 -> tau (``solver``), then :func:`sde_decode` tau -> 1."""
    tau = float(tau)
    if tau == 1.0:
        return x.clone()
    z = integrate(make_field(model, y_src, guidance_encode), x, 1.0, tau, steps, solver,
                  guidance_encode)
    return sde_decode(model, z, y_tgt, tau, guidance_decode, steps, noise, generator)


@torch.no_grad()
def sdedit(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    tau: float,
    guidance: float,
    steps: int,
    solver: str,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SDEdit-style baseline: noise the source to tau along the path (fresh x_0), then decode."""
    _check_x(model, x, "sdedit")
    x0 = randn(x.shape, generator).to(x.device, x.dtype)
    z = randn(x.shape, generator).to(x.device, x.dtype) if sigma > 0 else None
    t = torch.full((x.shape[0],), float(tau), device=x.device)
    xt = sb_sample_xt(x0, x, t, sigma, z)
    return decode(model, xt, target, tau=tau, guidance=guidance, steps=steps, solver=solver)


@torch.no_grad()
def sample(
    model: nn.Module,
    target,
    n: int,
    shape: tuple[int, ...],
    *,
    guidance: float,
    steps: int,
    solver: str,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Generate n images of the target domain from noise: integrate 0 -> 1.

    Args:
        shape: (C, H, W) of one sample.
    """
    x0 = torch.randn((n, *shape), generator=generator).to(device)
    return decode(model, x0, target, tau=0.0, guidance=guidance, steps=steps, solver=solver)
