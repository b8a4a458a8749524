"""Pixel-aligned structure metrics: SSIM and PSNR on images in [-1, 1] (data range 2).

Both wrap ``torchmetrics.functional`` (never torchvision) and run in batches so that large test sets
do not have to fit in memory at once. Use them for "structure vs the source image" and "accuracy vs
the aligned true target".
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import MedShiftError
from ._common import DATA_RANGE, batches, check_pair

Reduction = Literal["mean", "none"]


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    raise MedShiftError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    data_range: float = DATA_RANGE,
    kernel_size: int = 11,
    sigma: float = 1.5,
    batch_size: int = 256,
    progress: bool | str = False,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), Gaussian window 11 / sigma 1.5.

    Args:
        a: (N, C, H, W) images in [-1, 1] (e.g. translations).
        b: (N, C, H, W) reference images, same shape (e.g. sources or true targets).
        reduction: "mean" -> scalar tensor, "none" -> (N,) per-image SSIM.
        data_range: max - min of the pixel range (2 for [-1, 1]).
        kernel_size: Gaussian window size (images must be at least this large).
        sigma: Gaussian window std.
        batch_size: images per chunk.
        progress: tqdm bar (True or a description).

    Returns:
        Scalar or (N,) float32 tensor on a's device; SSIM(x, x) = 1.
    """
    a, b = check_pair(a, b)
    if min(a.shape[-2:]) < kernel_size:
        raise MedShiftError(
            f"SSIM needs images of at least {kernel_size}x{kernel_size} pixels, got "
            f"{tuple(a.shape[-2:])}; pass a smaller kernel_size"
        )
    from torchmetrics.functional.image import structural_similarity_index_measure as _ssim

    out = []
    for sl in batches(a.shape[0], batch_size, progress):
        out.append(
            _ssim(
                a[sl].float(),
                b[sl].float(),
                data_range=data_range,
                kernel_size=kernel_size,
                sigma=sigma,
                reduction="none",
            )
        )
    return _reduce(torch.cat(out), reduction)


def psnr(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    data_range: float = DATA_RANGE,
    batch_size: int = 256,
    progress: bool | str = False,
) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10·log10(data_range² / MSE) in dB.

    The mean reduction averages the per-image dB values (as the paper-style tables do), not the
    MSE. Identical images give +inf.

    Args:
        a: (N, C, H, W) images in [-1, 1].
        b: (N, C, H, W) reference images, same shape.
        reduction: "mean" -> scalar tensor, "none" -> (N,) per-image PSNR.
        data_range: max - min of the pixel range (2 for [-1, 1]).
        batch_size: images per chunk.
        progress: tqdm bar (True or a description).

    Returns:
        Scalar or (N,) float32 tensor in dB.
    """
    a, b = check_pair(a, b)
    from torchmetrics.functional.image import peak_signal_noise_ratio as _psnr

    out = []
    for sl in batches(a.shape[0], batch_size, progress):
        out.append(
            _psnr(
                a[sl].float(),
                b[sl].float(),
                data_range=data_range,
                reduction="none",
                dim=(1, 2, 3),
            )
        )
    return _reduce(torch.cat(out), reduction)


def seam_ratio(image: torch.Tensor, rows, cols) -> float:
    """Mean gradient magnitude across the seam lines of a tiling ÷ everywhere else.

    A seam shows as a step between neighbouring pixels: |I[i + 1] - I[i]| on the lines where the
    blend hands over from one tile to another is larger than on the other lines. 1 means no
    seam (issue 30 asks <= 1.05 on a 2048² translation); compare with the input's own ratio on
    the same lines.

    Args:
        image: (H, W) image (a tensor or array).
        rows: indices i of the vertical gradient I[i + 1] - I[i] across the seam rows
            (``TileGrid.seams``); cols: the same for the horizontal gradient.

    Returns:
        mean |gradient| on the seam lines / mean |gradient| on all other lines.
    """
    x = torch.as_tensor(image, dtype=torch.float64)
    if x.dim() != 2 or min(x.shape) < 2:
        raise MedShiftError(f"seam_ratio needs an (H, W) image, got shape {tuple(x.shape)}")
    gy, gx = (x[1:] - x[:-1]).abs(), (x[:, 1:] - x[:, :-1]).abs()
    mr = torch.zeros(gy.shape[0], dtype=torch.bool)
    mr[list(rows)] = True
    mc = torch.zeros(gx.shape[1], dtype=torch.bool)
    mc[list(cols)] = True
    if not (bool(mr.any()) or bool(mc.any())):
        raise MedShiftError("seam_ratio: no seam lines (the tiling has one tile)")
    on = torch.cat([gy[mr].flatten(), gx[:, mc].flatten()])
    off = torch.cat([gy[~mr].flatten(), gx[:, ~mc].flatten()])
    return float(on.mean() / off.mean())
