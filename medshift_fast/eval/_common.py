"""Shared helpers for the metrics: input checks, batching with an optional tqdm bar."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import MedShiftError

DATA_RANGE = 2.0  # images live in [-1, 1]


def check_images(x: torch.Tensor, name: str = "images", channels: int | None = 1) -> torch.Tensor:
    """Validate an image batch and return it as floating point.

    Args:
        x: (N, C, H, W) tensor; (N, H, W) is accepted and gets C = 1.
        name: what to call it in error messages.
        channels: required C (None: any).

    Returns:
        (N, C, H, W) floating tensor (float32 unless it already was floating).

    Raises:
        MedShiftError: wrong type, rank, channel count, or an empty batch.
    """
    if not isinstance(x, torch.Tensor):
        raise MedShiftError(f"{name} must be a torch.Tensor of shape (N, 1, H, W), got {type(x)}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise MedShiftError(
            f"{name} must have shape (N, 1, H, W) (grayscale in [-1, 1]), got {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise MedShiftError(f"{name} must have {channels} channel(s), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise MedShiftError(f"{name} is empty (N = 0); pass at least one image")
    if not x.is_floating_point():
        x = x.float()
    return x


def check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two aligned image batches of the same shape (for SSIM/PSNR)."""
    a = check_images(a, "a", channels=None)
    b = check_images(b, "b", channels=None)
    if a.shape != b.shape:
        raise MedShiftError(
            f"image batches must have the same shape to be compared pixel by pixel, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


def check_features(f: torch.Tensor, name: str, min_rows: int = 2) -> torch.Tensor:
    """Validate a (N, D) feature matrix and return it as float64."""
    if not isinstance(f, torch.Tensor) or f.dim() != 2:
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f)
        raise MedShiftError(f"{name} must be a (N, D) feature tensor, got {shape}")
    if f.shape[0] < min_rows:
        raise MedShiftError(f"{name} needs at least {min_rows} rows (samples), got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise MedShiftError(f"{name} contains NaN or Inf; check the images fed to the extractor")
    return f.double()


def check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise MedShiftError(
            f"feature sets must have the same dimension, got {a.shape[1]} and {b.shape[1]}"
        )


def batches(
    n: int, batch_size: int, progress: bool | str = False, unit: str = "img"
) -> Iterator[slice]:
    """Yield slices covering range(n) in chunks of batch_size, with an optional tqdm bar.

    Args:
        n: number of items.
        batch_size: items per chunk (>= 1).
        progress: False for silence, True or a description string for a tqdm bar on stderr.
        unit: tqdm unit label.
    """
    if batch_size < 1:
        raise MedShiftError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, n, batch_size)
    if not progress:
        for s in starts:
            yield slice(s, min(s + batch_size, n))
        return
    from tqdm import tqdm

    desc = progress if isinstance(progress, str) else None
    with tqdm(total=n, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
        for s in starts:
            e = min(s + batch_size, n)
            yield slice(s, e)
            bar.update(e - s)
