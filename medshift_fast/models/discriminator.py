"""A multi-scale patch discriminator conditioned on the target domain (adversarial distillation).

``PatchDiscriminator(num_classes, channels, scales)`` judges an image (or a crop) at ``scales``
resolutions (1, 1/2, 1/4, ... by 2x2 average pooling): at every scale a small fully
convolutional trunk (3x3 conv, then stride-2 4x4 convs doubling the channels, LeakyReLU 0.2)
gives a feature map h, and each patch's logit is ``w . h + <embed(y), h>`` -- the projection
discriminator (Miyato & Koyama 2018): the domain label y enters as an inner product with the
features, so one network judges every target domain. Every convolution and the embedding carry
spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``), which bounds the
network's Lipschitz constant without the double backward of an R1 penalty.

The finest scale sees single pixels (its first layer is a stride-1 3x3 convolution): the noise
grain and edge sharpness the translations lacked; the coarser scales see contrast and the
scatter floor. Nothing here is pretrained -- in particular not the evaluation's feature network.

:func:`hinge_d_loss` / :func:`hinge_g_loss` are the hinge losses of Lim & Ye (2017) and
Miyato et al. (2018), averaged over patches and scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import MedShiftError

__all__ = ["PatchDiscriminator", "hinge_d_loss", "hinge_g_loss", "lowpass"]


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std ``sigma`` px, radius ceil(3 sigma), reflect padding) of every
    channel of x (B, C, H, W); sigma 0 returns x."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3.0 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class _Scale(nn.Module):
    """One scale: conv3x3 -> (conv4x4 s2) x depth -> conv3x3; projection logits per patch."""

    def __init__(self, in_ch: int, ch: int, depth: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_ch, ch, 3, 1, 1)),
                                   nn.LeakyReLU(0.2)]
        c = ch
        for _ in range(depth):
            layers += [spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [spectral_norm(nn.Conv2d(c, c, 3, 1, 1)), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Conv2d(c, 1, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, c))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        proj = (self.embed(y)[:, :, None, None] * h).sum(1, keepdim=True)
        return self.out(h) + proj  # (B, 1, h', w') patch logits


class PatchDiscriminator(nn.Module):
    """Multi-scale, domain-conditioned patch discriminator (see the module docstring).

    Args:
        num_classes: domain labels it can be conditioned on (0..num_classes-1).
        in_channels: image channels.
        channels: width of the first layer of every scale.
        scales: how many resolutions (1 = full resolution only).
        depth: stride-2 layers per scale (receptive field ~ 4 * 2**depth pixels of that scale).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, channels: int = 32,
                 scales: int = 3, depth: int = 2, gain: float = 1.0,
                 residual_sigma: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1 or channels < 1 or scales < 1 or depth < 0:
            raise MedShiftError(f"discriminator needs num_classes, channels, scales >= 1 and "
                                f"depth >= 0, got {num_classes}, {channels}, {scales}, {depth}")
        self.config = {"num_classes": num_classes, "in_channels": in_channels,
                       "channels": channels, "scales": scales, "depth": depth, "gain": gain,
                       "residual_sigma": residual_sigma}
        self.gain, self.residual_sigma = float(gain), float(residual_sigma)
        c_in = in_channels * (2 if residual_sigma > 0 else 1)
        self.scales = nn.ModuleList(_Scale(c_in, channels, depth, num_classes)
                                    for _ in range(scales))
        self.min_size = 2 ** (scales - 1) * 2 ** depth

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                weight: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Patch logits of images x (B, C, H, W) as domain y (B,): one map per scale.
        ``weight`` (B, 1, H, W), optional: a per-pixel factor on the fine-scale residual (e.g.
        one over the local noise std: the residual in units of the grain), pooled with the
        image at every scale."""
        if min(x.shape[-2:]) < self.min_size:
            raise MedShiftError(f"the discriminator needs images of at least {self.min_size} "
                                f"px per side, got {tuple(x.shape[-2:])}; use a larger --crop")
        out = []
        for k, s in enumerate(self.scales):
            out.append(s(self._input(x, weight), y))
            if k + 1 < len(self.scales):
                x = F.avg_pool2d(x, 2)
                weight = None if weight is None else F.avg_pool2d(weight, 2)
        return out

    def _input(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The image and, scaled by ``gain`` (and ``weight``), its fine-scale residual
        x - G_sigma * x (at every scale): the residual carries the grain without the anatomy,
        which would otherwise swamp it in a positively homogeneous (LeakyReLU) network."""
        if self.residual_sigma <= 0:
            return x
        r = self.gain * (x - lowpass(x, self.residual_sigma))
        return torch.cat([x, r if weight is None else r * weight], 1)


def hinge_d_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), averaged over scales."""
    terms = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """-mean D(fake), averaged over scales."""
    return -torch.stack([f.mean() for f in fake]).mean()
