"""A small KL autoencoder (a VAE in the style of the SD/LDM first stage) for latent-mode training.

Encoder: conv -> [ResBlock x n, stride-2 conv] per level -> ResBlock -> GroupNorm, SiLU, conv to
2 z_c channels (posterior mean and log-variance). Decoder mirrors it with nearest upsampling.
A (B, C, H, W) image in [-1, 1] becomes a (B, z_c, H / f, W / f) latent, f = 2^(levels - 1).
Loss (see train/autoencoder.py): L1 reconstruction + kl_weight * KL(q(z|x) || N(0, I)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MedShiftError


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the KL autoencoder.

    Attributes:
        in_channels: image channels (1 for X-rays).
        latent_channels: z_c.
        channels: base width.
        channel_mult: width multiplier per level; the downsampling factor is 2^(len - 1).
        num_res_blocks: residual blocks per level.
    """

    in_channels: int = 1
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if min(self.in_channels, self.latent_channels, self.channels, self.num_res_blocks) < 1:
            raise MedShiftError("AutoencoderConfig: channels and block counts must be >= 1")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise MedShiftError("AutoencoderConfig: channel_mult must be non-empty and >= 1")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(ch: int) -> nn.GroupNorm:
    g = min(32, max(1, ch // 4))
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class KLAutoencoder(nn.Module):
    """encode: (B, C, H, W) -> (mean, logvar) each (B, z_c, H/f, W/f); decode: z -> image."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                enc.append(_Res(cur, mult * ch))
                cur = mult * ch
            if level != len(cfg.channel_mult) - 1:
                enc.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        enc += [_Res(cur, cur), _norm(cur), nn.SiLU(), nn.Conv2d(cur, 2 * cfg.latent_channels, 3,
                                                                 padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, cur, 3, padding=1), _Res(cur, cur)]
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks):
                dec.append(_Res(cur, mult * ch))
                cur = mult * ch
            if level:
                dec.append(_Up(cur))
        dec += [_norm(cur), nn.SiLU(), nn.Conv2d(cur, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor) -> None:
        f = self.config.factor
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise MedShiftError(f"autoencoder: expected (B, {self.config.in_channels}, H, W) "
                                f"images, got {tuple(x.shape)}")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise MedShiftError(f"autoencoder: image size {tuple(x.shape[-2:])} must be "
                                f"divisible by {f}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x) = N(mean, exp(logvar)); logvar clamped to [-30, 20] as in LDM."""
        self._check(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction of a posterior sample: returns (x_rec, mean, logvar)."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


__all__ = ["AutoencoderConfig", "KLAutoencoder", "kl_divergence"]
