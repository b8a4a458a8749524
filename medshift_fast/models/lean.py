"""The lean one-step translator network (``StudentConfig.arch = "lean"``): cheap per pixel.

A one-step student computes ``y = x + F(x, n; tau, y_src, y_tgt)`` once per image, so its cost
is its arithmetic per pixel. The U-Net student spends ~550 GFLOP per megapixel, most of it in
full-resolution 32- and 64-channel convolutions and attention. This network keeps the expensive
layers at low resolution and is purely local:

    [x, n]  (B, C + N, H, W)        the image and N per-pixel noise maps (N = noise_channels)
      -> pixel-unshuffle r          (B, (C + N) r^2, H/r, W/r): lossless, no full-res layer
      -> conv k x k -> widths[0]    the stem
      -> level l = 0..L-1 at H / (r 2^l): ``blocks[l]`` residual blocks; between levels a 2x2
         stride-2 convolution down and, on the way back, a 1x1 convolution + pixel-shuffle 2 up
         added to the level's skip, then ``blocks[l]`` decoder blocks (levels < L - 1)
      -> SiLU -> conv k x k -> C r^2 (zero-initialised) -> pixel-shuffle r: the residual

A residual block is ``h + conv(SiLU(FiLM(conv(SiLU(h)))))`` (``block="conv"``: two k x k
convolutions) or ``h + pw(SiLU(FiLM(pw(dw(h)))))`` (``block="dw"``: a depthwise k x k
convolution and a 2x-expanding pointwise pair). FiLM is a per-channel scale and shift from the
conditioning embedding ``MLP(sinusoid(tau)) + E_tgt[y_tgt] + E_src[y_src]`` (one vector per
image). There is no normalisation layer (no GroupNorm statistics over the tile) and no
attention, so the output at a pixel depends only on the inputs within its receptive field, and
a tiled translation with an overlap of at least :func:`halo` pixels on each side equals the
whole-image one (up to float summation order).

Receptive field (``halo(cfg)``, the farthest input pixel that can influence an output pixel, in
pixels, along each axis): the unshuffle groups r x r pixels (a position at stride J = r covers
its own block); a k x k convolution at stride J widens the margin a by (k - 1) / 2 * J; the 2x2
stride-2 down keeps it (J doubles); the shuffle up adds the coarse stride's offset J; the output
pixel lies in an r x r block, so halo = a + r - 1. The default ``LeanConfig()`` (r 2, widths
(32, 64), blocks (1, 2), 3x3 convolutions) has a halo of 31 px (a 63 x 63 px receptive field):
an output pixel at least 31 px inside every inner edge of its tile is exactly the whole-image
one, so tiles whose blend takes only such pixels (overlap >= 2 x 31 px, rounded up to the
factor 4, with a window that is zero within 31 px of an inner edge) are seam-free.
tests/models/test_lean.py checks the bound against the gradient's support.

The noise maps are the student's stochastic input (issue 29): with ``noise_channels = 0`` the
network is deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MedShiftError
from .unet import timestep_embedding

__all__ = ["BLOCKS", "LeanConfig", "LeanNet", "halo"]

BLOCKS = ("conv", "dw")


@dataclass(frozen=True)
class LeanConfig:
    """Architecture of the lean network (module docstring).

    Attributes:
        in_channels: image channels C (the output has the same number).
        num_classes: number of domains K (labels 0..K-1).
        unshuffle: pixel-unshuffle factor r of the stem (1, 2, 4, ...).
        widths: channels per level (level l runs at H / (r 2^l)).
        blocks: residual blocks per level on the way down; levels above the deepest also get
            as many on the way up.
        kernel: spatial kernel size k (odd) of the convolutions (stem, blocks, output).
        block: conv (two k x k convolutions) | dw (depthwise k x k + pointwise pair).
        noise_channels: per-pixel noise maps N taken beside the image (0: deterministic).
        emb_dim: width of the conditioning embedding.
    """

    in_channels: int = 1
    num_classes: int = 5
    unshuffle: int = 2
    widths: tuple[int, ...] = (32, 64)
    blocks: tuple[int, ...] = (1, 2)
    kernel: int = 3
    block: str = "conv"
    noise_channels: int = 1
    emb_dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        ok = [
            (self.in_channels >= 1 and self.num_classes >= 1,
             "in_channels and num_classes must be >= 1"),
            (self.unshuffle >= 1, "unshuffle must be >= 1"),
            (len(self.widths) >= 1 and min(self.widths) >= 1, "widths: >= 1 level of >= 1 "
             "channel"),
            (len(self.blocks) == len(self.widths) and min(self.blocks) >= 0,
             f"blocks needs one count >= 0 per level ({len(self.widths)}), got {self.blocks}"),
            (self.kernel >= 1 and self.kernel % 2 == 1, "kernel must be odd"),
            (self.block in BLOCKS, f"block must be one of {', '.join(BLOCKS)}"),
            (self.noise_channels >= 0, "noise_channels must be >= 0"),
            (self.emb_dim >= 2, "emb_dim must be >= 2"),
        ]
        for good, msg in ok:
            if not good:
                raise MedShiftError(f"LeanConfig: {msg}, got {self}")

    @property
    def down_factor(self) -> int:
        """Image sides must be multiples of this: r 2^(L - 1)."""
        return self.unshuffle * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LeanConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise MedShiftError(f"LeanConfig: unknown field(s) {sorted(unknown)}; known: "
                                f"{sorted(known)}")
        return cls(**d)


def halo(cfg: LeanConfig) -> int:
    """The farthest input pixel (along an axis, in pixels) that can change an output pixel."""
    r, p = cfg.unshuffle, (cfg.kernel - 1) // 2
    per_block = 2 * p if cfg.block == "conv" else p
    a, j = p * r, r  # the stem's convolution at stride r
    skips = []
    for level, nb in enumerate(cfg.blocks):
        a += nb * per_block * j
        if level + 1 < len(cfg.blocks):
            skips.append((a, j))
            j *= 2  # 2x2 stride-2 down: the margin stays
    for level in reversed(range(len(cfg.blocks) - 1)):
        a_skip, j = skips[level]
        a = max(a + j, a_skip) + cfg.blocks[level] * per_block * j  # up, + skip, decoder
    a += p * j  # the output convolution
    return a + r - 1


def _zero(m: nn.Module) -> nn.Module:
    for q in m.parameters():
        nn.init.zeros_(q)
    return m


class _Block(nn.Module):
    """A residual block with FiLM conditioning (module docstring)."""

    def __init__(self, ch: int, kind: str, k: int, emb_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Conv2d(ch, ch, k, padding=k // 2)
            self.b = _zero(nn.Conv2d(ch, ch, k, padding=k // 2))
            mid = ch
        else:
            self.dw = nn.Conv2d(ch, ch, k, padding=k // 2, groups=ch)
            self.a = nn.Conv2d(ch, 2 * ch, 1)
            self.b = _zero(nn.Conv2d(2 * ch, ch, 1))
            mid = 2 * ch
        self.film = nn.Linear(emb_dim, 2 * mid)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        if self.kind == "conv":
            u = self.a(F.silu(h))
        else:
            u = self.a(self.dw(h))
        u = u * (1 + scale) + shift
        return h + self.b(F.silu(u))


class LeanNet(nn.Module):
    """F(x, n; tau, y_src, y_tgt): the residual of the lean one-step translation.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: LeanConfig) -> None:
        super().__init__()
        self.config = cfg
        self.in_channels, self.num_classes = cfg.in_channels, cfg.num_classes
        self.noise_channels = cfg.noise_channels
        self.down_factor = cfg.down_factor
        self.halo = halo(cfg)
        r, k, w0, e = cfg.unshuffle, cfg.kernel, cfg.widths[0], cfg.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.tgt_emb = nn.Embedding(cfg.num_classes, e)
        self.src_emb = nn.Embedding(cfg.num_classes, e)
        self.stem = nn.Conv2d((cfg.in_channels + cfg.noise_channels) * r * r, w0, k,
                              padding=k // 2)
        self.enc = nn.ModuleList(nn.ModuleList(_Block(w, cfg.block, k, e) for _ in range(nb))
                                 for w, nb in zip(cfg.widths, cfg.blocks))
        self.down = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2)
                                  for a, b in zip(cfg.widths, cfg.widths[1:]))
        self.up = nn.ModuleList(nn.Conv2d(b, 4 * a, 1) for a, b in zip(cfg.widths,
                                                                      cfg.widths[1:]))
        self.dec = nn.ModuleList(nn.ModuleList(_Block(w, cfg.block, k, e) for _ in range(nb))
                                 for w, nb in zip(cfg.widths[:-1], cfg.blocks[:-1]))
        self.out = _zero(nn.Conv2d(w0, cfg.in_channels * r * r, k, padding=k // 2))

    def embed(self, tau: torch.Tensor, y_src: torch.Tensor, y_tgt: torch.Tensor) -> torch.Tensor:
        """The conditioning vector (B, emb_dim), SiLU-activated for the FiLM layers."""
        e = self.time_mlp(timestep_embedding(tau, self.config.emb_dim))
        return F.silu(e + self.tgt_emb(y_tgt) + self.src_emb(y_src))

    def forward(self, x: torch.Tensor, tau: torch.Tensor, y_src: torch.Tensor,
                y_tgt: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The residual F.

        Args:
            x: (B, C, H, W) images, H and W multiples of ``down_factor``.
            tau: (B,) translation times.
            y_src, y_tgt: (B,) int64 source and target labels.
            noise: (B, N, H, W) noise maps (N = noise_channels; scaled by the caller), or
                None for zeros.

        Returns:
            (B, C, H, W) the residual (the translation is x + F).
        """
        f = self.down_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise MedShiftError(f"LeanNet: image size {tuple(x.shape[-2:])} must be divisible "
                                f"by {f}")
        if self.noise_channels:
            if noise is None:
                noise = x.new_zeros((x.shape[0], self.noise_channels, *x.shape[-2:]))
            x = torch.cat([x, noise.to(x.dtype)], 1)
        emb = self.embed(tau, y_src, y_tgt).to(x.dtype)
        r = self.config.unshuffle
        h = self.stem(F.pixel_unshuffle(x, r) if r > 1 else x)
        skips = []
        for level, blocks in enumerate(self.enc):
            for blk in blocks:
                h = blk(h, emb)
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        for level in reversed(range(len(self.dec))):
            h = skips[level] + F.pixel_shuffle(self.up[level](h), 2)
            for blk in self.dec[level]:
                h = blk(h, emb)
        h = self.out(F.silu(h))
        return F.pixel_shuffle(h, r) if r > 1 else h
