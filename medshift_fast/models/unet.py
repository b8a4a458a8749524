"""ADM-style class-conditional U-Net velocity field v(x, t, y).

GroupNorm + SiLU residual blocks, sinusoidal time embedding -> MLP, a domain embedding with
K + 1 rows (row K = the null label for classifier-free guidance) added to the time embedding,
self-attention (through ``ops.attention``) at chosen downsampling factors, zero-initialised
output and residual-branch convolutions (the network starts as v = 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import MedShiftError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the velocity field.

    Attributes:
        in_channels: image (or latent) channels; the output has the same number.
        num_classes: number of domains K (the embedding has K + 1 rows).
        model_channels: base width.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level.
        attention_ds: downsampling factors (1, 2, 4, ...) that get self-attention.
        mid_attention: self-attention in the middle block (False with ``attention_ds=()``: a
            purely local network, whose tiled translation equals the whole-image one up to
            GroupNorm statistics).
        head_channels: channels per attention head.
        dropout: dropout inside residual blocks.
        image_size: nominal training size (informative; any size divisible by 2**(levels-1) works).
    """

    in_channels: int = 1
    num_classes: int = 5
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (4,)
    mid_attention: bool = True
    head_channels: int = 32
    dropout: float = 0.0
    image_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_ds", tuple(int(d) for d in self.attention_ds))
        if self.in_channels < 1 or self.num_classes < 1 or self.model_channels < 1:
            raise MedShiftError("UNetConfig: in_channels, num_classes, model_channels must be >= 1")
        if not self.channel_mult or self.num_res_blocks < 1 or self.head_channels < 1:
            raise MedShiftError("UNetConfig: channel_mult non-empty, num_res_blocks >= 1 needed")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # CPU demo: ~1 M parameters, 32-64 px.
    "tiny": dict(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_ds=(4,),
        head_channels=32,
    ),
    # The authors' earlier default (~6.5 M parameters with 4 latent channels).
    "small": dict(
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_ds=(4,),
        head_channels=32,
    ),
    "base": dict(
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_ds=(4, 8),
        head_channels=64,
    ),
}


def preset_config(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise MedShiftError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return UNetConfig(**{**PRESETS[name], **overrides})


def _norm(ch: int) -> nn.GroupNorm:
    g = min(32, max(1, ch // 4))
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (B,) in [0, 1] (scaled by 1000 as in ADM) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale-shift (FiLM) as in ADM
        self.norm2 = _norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """GroupNorm -> 1x1 qkv -> multi-head attention over H*W tokens -> 1x1 proj -> residual."""

    def __init__(self, ch: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = max(1, ch // head_channels)
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dispatched: the eager block (SDPA) on the CPU and for export, Triton attention on CUDA.
        return ops.attention_block(
            x,
            self.norm.weight,
            self.norm.bias,
            self.norm.num_groups,
            self.qkv.weight,
            self.qkv.bias,
            self.proj.weight,
            self.proj.bias,
            self.num_heads,
            self.norm.eps,
        )


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Class-conditional velocity field v(x, t, y): (B, C, H, W), (B,), (B,) -> (B, C, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.in_channels = cfg.in_channels
        self.num_classes = cfg.num_classes
        ch = cfg.model_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur, ds = ch, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(cur, mult * ch, emb_dim, cfg.dropout)]
                cur = mult * ch
                if ds in cfg.attention_ds:
                    blocks.append(AttentionBlock(cur, cfg.head_channels))
                self.down.append(nn.ModuleList(blocks))
                skips.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skips.append(cur)
                ds *= 2
        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, cfg.dropout)]
            + ([AttentionBlock(cur, cfg.head_channels)] if cfg.mid_attention else [])
            + [ResBlock(cur, cur, emb_dim, cfg.dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(cur + skips.pop(), mult * ch, emb_dim, cfg.dropout)]
                cur = mult * ch
                if ds in cfg.attention_ds:
                    blocks.append(AttentionBlock(cur, cfg.head_channels))
                if level and i == cfg.num_res_blocks:
                    blocks.append(Upsample(cur))
                    ds //= 2
                self.up.append(nn.ModuleList(blocks))
        self.out = nn.Sequential(
            _norm(cur), nn.SiLU(), _zero(nn.Conv2d(cur, cfg.in_channels, 3, padding=1))
        )
        self.down_factor = 2 ** (len(cfg.channel_mult) - 1)

    @staticmethod
    def _run(blocks, h, emb):
        for blk in blocks:
            h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                emb_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, C, H, W); t (B,) or scalar in [0, 1]; y (B,) int64 in 0..K (K = null);
        emb_extra: optional (B, 4 * model_channels) added to the time + label embedding (the
        distilled students' extra conditioning)."""
        if x.shape[-1] % self.down_factor or x.shape[-2] % self.down_factor:
            raise MedShiftError(
                f"UNet: image size {tuple(x.shape[-2:])} must be divisible by {self.down_factor}"
            )
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        emb = emb + self.label_emb(y).to(emb.dtype)
        if emb_extra is not None:
            emb = emb + emb_extra.to(emb.dtype)
        h = self.input_conv(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.out(h)


def build_model(preset: str | UNetConfig = "tiny", **overrides) -> UNet:
    """A U-Net from a preset name (tiny | small | base) or a UNetConfig, with field overrides."""
    cfg = preset if isinstance(preset, UNetConfig) else preset_config(preset, **overrides)
    return UNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["PRESETS", "UNet", "UNetConfig", "build_model", "count_parameters", "preset_config"]
