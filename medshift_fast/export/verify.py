"""Run an exported engine and eager PyTorch on the same inputs; report max abs error and PSNR."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .graphs import (
    ExportSettings,
    build_module,
    example_inputs,
    io_layout,
    noise_channels,
    uint16_to_unit,
)

# Default max-abs tolerance (model space, [-1, 1] images) by compute dtype. A translation
# integrates dozens of U-Net calls, so fp32 rounding differences between runtimes grow a little
# beyond the per-op 1e-4 of tests/utils.py.
DEFAULT_TOL = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}


@dataclass(frozen=True)
class VerifyResult:
    """Comparison of an engine with eager PyTorch.

    Attributes:
        max_abs: max |engine - eager| in model units ([-1, 1] images; velocity units for step).
        psnr: 10 log10(R^2 / MSE) in dB with R = 2 (images) or the eager output's peak-to-peak
            range (step); inf when identical.
        tolerance: the max_abs bound.
        batch: images compared.
    """

    max_abs: float
    psnr: float
    tolerance: float
    batch: int

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs) and self.max_abs <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"verify: max abs error {self.max_abs:.3g}, PSNR {self.psnr:.1f} dB over "
                f"{self.batch} image(s) (tolerance {self.tolerance:g}) {verdict}")


def compare(out: torch.Tensor, ref: torch.Tensor, settings: ExportSettings, tolerance: float,
            ) -> VerifyResult:
    """Max abs error and PSNR of ``out`` against ``ref`` (uint16 frames compared in [-1, 1])."""
    if out.dtype == torch.uint16 or ref.dtype == torch.uint16:
        out, ref = uint16_to_unit(out), uint16_to_unit(ref)
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if out.shape != ref.shape:
        return VerifyResult(float("inf"), float("-inf"), tolerance, int(ref.shape[0]))
    err = (out - ref).abs()
    max_abs = float(err.max()) if torch.isfinite(out).all() else float("inf")
    mse = float((err**2).mean())
    rng = 2.0 if settings.what == "translate" else max(float(ref.max() - ref.min()), 1e-12)
    psnr = float("inf") if mse == 0 else 10.0 * math.log10(rng**2 / mse)
    return VerifyResult(max_abs, psnr, tolerance, int(ref.shape[0]))


def verify_engine(engine, model: nn.Module, settings: ExportSettings,
                  tolerance: float | None = None, batch: int | None = None,
                  seed: int = 1, codec=None, size: tuple[int, int] | None = None
                  ) -> VerifyResult:
    """Run ``engine`` and the eager module on the same deterministic inputs.

    Args:
        engine: a loaded engine (``engines.load_engine``).
        model: the U-Net it was exported from (the eager reference runs on its device, with the
            default backend, in the engine's compute dtype).
        settings: the export settings.
        tolerance: max abs bound (default DEFAULT_TOL by dtype).
        batch: images to compare (default settings.batch).
        seed: input seed (not the one used for tracing).
        codec: the run's codec (latent mode): the reference is then the eager pipeline with
            the fp32 autoencoder (pixel images in and out for translate; step in latent space).
        size: (H, W) of the compared images (a dynamic graph; default the export size).

    Returns:
        VerifyResult.
    """
    tol = DEFAULT_TOL[settings.dtype] if tolerance is None else float(tolerance)
    device = next(model.parameters()).device
    c, side = io_layout(model, settings, codec)
    args = example_inputs(settings, int(model.num_classes), c, batch or settings.batch, device,
                          seed, size=size or side,
                          noise_channels=noise_channels(model, settings))
    with torch.no_grad():
        ref = build_module(model, settings, codec).to(device)(*args)
    out = engine(*args)
    return compare(out, ref, settings, tol)
