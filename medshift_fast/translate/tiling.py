"""Overlapping tiles blended with a smooth window: translation in memory flat in image size.

The U-Net is local apart from its self-attention (and GroupNorm's statistics), so a large image
is translated as overlapping tiles of the size the model was trained on (MultiDiffusion,
Bar-Tal et al. 2023): every tile is evaluated on its own and the outputs are blended with a
separable window that falls to ~0 at a tile's edges (where zero padding distorts the
convolutions) and is 1 in its interior,

    F(x) = sum_k W_k * f(P_k x) / sum_k W_k,

the per-pixel least-squares agreement of the tiles' outputs (P_k crops tile k, W_k its window
placed on the image grid). For the multi-step teacher the blend is applied to the *velocity*
at every solver stage (``TiledModel`` wraps the network, so every solver, the fused Sampler and
the SDE decode see one velocity field over the whole image and there are no seams to
accumulate); for a one-step student it is applied once to the translation (``tiled_apply``).
Attention is confined to a tile, so memory is (tile batch) x (one tile's activations) plus a few
whole-image buffers.

Tile origins are multiples of the network's downsampling factor, so each tile sees the same
pixel phase of every strided convolution as the whole-image pass does: where the network is
local (no attention, a receptive field inside the overlap) tiled equals whole up to the
GroupNorm statistics.

Exact tiles for a local network (``margin`` > 0, a one-step student with a known receptive
field, ``models.lean.halo``): an output pixel at least ``margin`` = halo pixels inside every
inner edge of its tile IS the whole-image pass's pixel (the zero padding at a tile's edge cannot
reach it). The window is then 0 on the ``margin`` pixels next to an inner edge and the tiles
overlap by at least 2 x margin, so every pixel is blended only from tiles where it is exact:
tiled = whole up to float summation order, whatever the tile size. The tiles are also *fitted*
(``fitted_tiles``): n = ceil((L - o) / (t - o)) equal tiles of side ceil((L - o) / n) + o <= t,
so the only pixels computed twice are the overlaps (no tile hangs past the image, none is
larger than the image needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MedShiftError

__all__ = ["TileGrid", "TiledCodec", "TiledModel", "TiledStudent", "fitted_tiles", "plan_grid",
           "tile_starts", "tiled_apply", "window_1d"]


def tile_starts(length: int, tile: int, overlap: int, factor: int = 1) -> tuple[int, ...]:
    """Origins of tiles of side ``tile`` covering [0, length), overlapping by >= ~``overlap``.

    The n = ceil((length - tile) / (tile - overlap)) + 1 origins are spread evenly from 0 to
    length - tile and rounded down to multiples of ``factor`` (the last one is exact when
    ``length`` and ``tile`` are multiples of it). A length that fits one tile gives (0,).
    """
    if length <= tile:
        return (0,)
    stride = tile - overlap
    if stride < 1:
        raise MedShiftError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    n = math.ceil((length - tile) / stride) + 1
    last = length - tile
    out = [(round(i * last / (n - 1)) // factor) * factor for i in range(n - 1)] + [last]
    return tuple(sorted(set(out)))


def fitted_tiles(length: int, tile: int, overlap: int, factor: int = 1
                 ) -> tuple[int, tuple[int, ...]]:
    """The side and origins of the fewest equal tiles of at most ``tile`` px covering
    [0, length) with every overlap >= ``overlap`` (all multiples of ``factor``).

    n = ceil((L - o) / (t - o)) tiles of side t' = ceil((L - o) / n + o) (rounded up to the
    factor, <= t); origins k * (L - t') / (n - 1) rounded to the factor (to nearest, half up),
    so consecutive origins differ by at most t' - o. A length that fits one tile gives
    (length, (0,)).
    """
    length, tile, overlap, f = int(length), int(tile), int(overlap), int(factor)
    if length <= tile:
        return length, (0,)
    if tile - overlap < f or length % f or tile % f or overlap % f:
        raise MedShiftError(f"tiles of {tile} px overlapping by {overlap} px cannot cover {length} "
                            f"px in steps of the factor {f}")
    n = -(-(length - overlap) // (tile - overlap))
    side = -(-(-(-(length - overlap) // n) + overlap) // f) * f
    side = min(side, tile)
    last, gaps = (length - side) // f, n - 1
    return side, tuple(((2 * k * last + gaps) // (2 * gaps)) * f for k in range(n))


def window_1d(n: int, ramp: int, lo: bool = True, hi: bool = True,
              margin: int = 0) -> torch.Tensor:
    """(n,) float32 window: sin^2 ramps of ``ramp`` samples up from ~0 (and down at the end),
    1 in between; ``lo`` / ``hi`` False keep that end at 1 (an image border: no neighbour).
    ``margin`` > 0: 0 on the first (last) ``margin`` samples of a ``lo`` (``hi``) end, the ramp
    after them (the pixels a local network computes wrongly next to a tile's inner edge)."""
    w = torch.ones(n, dtype=torch.float32)
    m = min(int(margin), n // 2)
    r = min(int(ramp), n // 2 - m)
    prof = torch.ones(n, dtype=torch.float32)
    prof[:m] = 0.0
    if r > 0:
        prof[m:m + r] = torch.sin(0.5 * math.pi * (torch.arange(r, dtype=torch.float32) + 0.5)
                                  / r) ** 2
    if lo:
        w = w * prof
    if hi:
        w = w * prof.flip(0)
    return w


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an (H, W) image.

    Attributes:
        shape: (H, W) of the image (multiples of ``factor``).
        tile: (th, tw) of every tile (the tile size, clipped to the image; fitted to it when
            ``margin`` > 0).
        overlap: the requested overlap in pixels (ramp length of the window, plus the two
            margins).
        ys, xs: tile origins along each axis.
        margin: pixels next to a tile's inner edge that get weight 0 (a local network's halo;
            0: the sin^2 ramp over the whole overlap).
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    margin: int = 0

    @property
    def origins(self) -> list[tuple[int, int]]:
        """The (y, x) origin of every tile, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    @property
    def n_tiles(self) -> int:
        """The number of tiles."""
        return len(self.ys) * len(self.xs)

    @property
    def whole(self) -> bool:
        """One tile covering the whole image (no blending)."""
        return self.n_tiles == 1 and self.tile == self.shape

    def scaled(self, num: int, den: int = 1) -> TileGrid:
        """The same tiles on a grid ``num / den`` times as fine (a codec's output side)."""
        def f(v: int) -> int:
            if (v * num) % den:
                raise MedShiftError(f"tile geometry {v} is not divisible by {den}")
            return v * num // den

        return TileGrid((f(self.shape[0]), f(self.shape[1])), (f(self.tile[0]), f(self.tile[1])),
                        f(self.overlap), tuple(f(y) for y in self.ys),
                        tuple(f(x) for x in self.xs), f(self.margin))

    def seams(self) -> tuple[list[int], list[int]]:
        """The lines where the blend hands over between tiles: indices i of the gradients
        I[i + 1] - I[i] along each axis (rows, cols). Exact tiles (``margin``): the pixels
        ``margin`` inside an inner edge, where a tile's weight starts; otherwise the tile edges."""
        def lines(starts, side, length):
            out = set()
            for s in starts:
                for edge, inner in ((s, s > 0), (s + side, s + side < length)):
                    if inner:
                        cut = edge + self.margin if edge == s else edge - self.margin
                        out.add(cut - 1)
            return sorted(i for i in out if 0 <= i < length - 1)

        return (lines(self.ys, self.tile[0], self.shape[0]),
                lines(self.xs, self.tile[1], self.shape[1]))

    def windows(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (n_tiles, 1, th, tw), normaliser (1, 1, H, W) = 1 / sum of placed weights).

        A tile's window ramps only on the sides that have a neighbouring tile; on an image
        border it stays 1, so a pixel covered by one tile takes that tile's value exactly.
        """
        th, tw = self.tile
        m = self.margin
        ramp = self.overlap - 2 * m if m else self.overlap
        ws = []
        for y in self.ys:
            wy = window_1d(th, ramp, y > 0, y + th < self.shape[0], m)
            for x in self.xs:
                wx = window_1d(tw, ramp, x > 0, x + tw < self.shape[1], m)
                ws.append(wy[:, None] * wx[None, :])
        w = torch.stack(ws)[:, None]
        acc = torch.zeros((1, 1, *self.shape), dtype=torch.float32)
        for k, (y, x) in enumerate(self.origins):
            acc[..., y:y + th, x:x + tw] += w[k]
        return w.to(device), (1.0 / acc).to(device)


def plan_grid(shape: Sequence[int], tile: int | None, overlap: int, factor: int = 1,
              margin: int = 0) -> TileGrid:
    """The tile grid of an (H, W) image for tiles of side ``tile`` (None: the whole image).

    ``margin`` > 0 (a local network's halo; ``overlap`` >= 2 margin): exact, fitted tiles
    (module docstring, ``fitted_tiles``); 0: tiles of side ``tile`` spread evenly
    (``tile_starts``) and blended over the whole overlap.

    Raises:
        MedShiftError: H or W not a multiple of ``factor``, a tile or overlap that is not one.
    """
    h, w = int(shape[-2]), int(shape[-1])
    if h % factor or w % factor:
        raise MedShiftError(f"image {h}x{w} must be a multiple of {factor} to be tiled")
    if tile is None:
        return TileGrid((h, w), (h, w), 0, (0,), (0,))
    tile = int(tile)
    if tile < factor or tile % factor:
        raise MedShiftError(f"tile size {tile} must be a positive multiple of {factor} (the "
                            "network's downsampling factor)")
    overlap = max(0, int(overlap))
    if overlap >= tile:
        raise MedShiftError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    margin = max(0, int(margin))
    if margin:
        if overlap < 2 * margin or overlap % factor:
            raise MedShiftError(f"tile overlap {overlap} must be a multiple of {factor} and at "
                                f"least twice the network's receptive-field halo {margin}")
        th, ys = fitted_tiles(h, tile, overlap, factor)
        tw, xs = fitted_tiles(w, tile, overlap, factor)
        return TileGrid((h, w), (th, tw), overlap, ys, xs, margin)
    th, tw = min(tile, h), min(tile, w)
    return TileGrid((h, w), (th, tw), overlap, tile_starts(h, th, overlap, factor),
                    tile_starts(w, tw, overlap, factor))


def tiled_apply(fn: Callable[..., torch.Tensor], x: torch.Tensor, args: Sequence,
                grid: TileGrid, tile_batch: int, static_batch: bool = False,
                windows: tuple[torch.Tensor, torch.Tensor] | None = None,
                out_scale: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``fn`` over the overlapping tiles of every image of x, blended once.

    Args:
        fn: ``fn(tiles (n, C, th, tw), *per_tile_args) -> (n, C_out, th, tw)``.
        x: (B, C, H, W) images on ``grid``.
        args: per-image tensors with leading dimension B (times, labels, embeddings), or None.
        grid: the tile grid of (H, W).
        tile_batch: tiles per call of ``fn`` (over all images of x together).
        static_batch: pad the last call to ``tile_batch`` tiles (one static shape: compiled
            forwards, CUDA graphs).
        windows: the output grid's ``windows()`` on x's device (computed when None).
        out_scale: (num, den): ``fn``'s output side is num / den of its input's (a codec's
            encoder 1/f, decoder f/1).

    Returns:
        (B, C_out, H', W') float32 blend of the tiles' outputs on the output grid.
    """
    b = x.shape[0]
    if grid.whole:
        return fn(x, *args).float()
    og = grid if out_scale == (1, 1) else grid.scaled(*out_scale)
    if windows is None:
        windows = og.windows(x.device)
    w, inv = windows
    th, tw = grid.tile
    oh, ow = og.tile
    num, den = out_scale
    jobs = [(i, k, y0, x0) for i in range(b) for k, (y0, x0) in enumerate(grid.origins)]
    out = None
    for j in range(0, len(jobs), tile_batch):
        chunk = jobs[j:j + tile_batch]
        tiles = torch.stack([x[i, :, y0:y0 + th, x0:x0 + tw] for i, _, y0, x0 in chunk])
        # per-tile arguments by views + stack (no host-to-device index copy: CUDA-graph safe)
        targs = [a if a is None else torch.stack([a[i] for i, _, _, _ in chunk]) for a in args]
        n = len(chunk)
        if static_batch and n < tile_batch:
            pad = tile_batch - n
            tiles = torch.cat([tiles, tiles[-1:].expand(pad, *tiles.shape[1:])])
            targs = [a if a is None else torch.cat([a, a[-1:].expand(pad, *a.shape[1:])])
                     for a in targs]
        v = fn(tiles, *targs)[:n].float()
        if out is None:
            out = torch.zeros((b, v.shape[1], *og.shape), dtype=torch.float32,
                              device=x.device)
        for (i, k, y0, x0), vk in zip(chunk, v):
            oy, ox = y0 * num // den, x0 * num // den
            out[i, :, oy:oy + oh, ox:ox + ow].addcmul_(vk, w[k])
    return out.mul_(inv)


class TiledModel(nn.Module):
    """A velocity network evaluated tile by tile: ``forward(x, t, y, emb_extra=None)``.

    Images no larger than the tile go straight to the network. Larger ones are cut into the
    overlapping tiles of ``grid`` (rebuilt per image shape), evaluated ``tile_batch`` at a time
    (tiles of all images of the batch together, guidance's doubled batch included) and blended
    (module docstring). Exposes ``num_classes``, ``in_channels`` and ``down_factor`` like the
    network, so every solver, the fused Sampler and the SDE decode take it unchanged.

    Args:
        model: the network (``model(x, t, y[, emb_extra])``).
        tile: tile side (None: never tile).
        overlap: overlap (window ramp) in pixels.
        tile_batch: tiles per forward.
        forward: the callable to evaluate tiles with (default ``model``; e.g. a compiled copy).
        static_batch: pad tile batches to ``tile_batch`` (compiled / CUDA-graph forwards).
    """

    def __init__(self, model: nn.Module, tile: int | None, overlap: int, tile_batch: int,
                 forward: Callable | None = None, static_batch: bool = False) -> None:
        super().__init__()
        self.inner = model
        self.tile, self.overlap, self.tile_batch = tile, int(overlap), max(1, int(tile_batch))
        # not a registered submodule: a compiled copy must not duplicate the weights
        self.__dict__["_fwd"] = forward if forward is not None else model
        self.static_batch = bool(static_batch)
        self.num_classes = int(model.num_classes)
        self.in_channels = int(model.in_channels)
        self.down_factor = int(getattr(model, "down_factor", 1))
        self._grids: dict[tuple[int, int], tuple[TileGrid, tuple]] = {}

    def grid(self, shape: Sequence[int], device=None) -> tuple[TileGrid, tuple]:
        """The tile grid and blend windows of an input ``shape`` (cached per size)."""
        key = (int(shape[-2]), int(shape[-1]))
        got = self._grids.get(key)
        if got is None:
            g = plan_grid(key, self.tile, self.overlap, self.down_factor)
            got = (g, g.windows(device) if not g.whole else ())
            if len(self._grids) >= 4:
                self._grids.pop(next(iter(self._grids)))
            self._grids[key] = got
        return got

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                emb_extra: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity over the whole image: tiles evaluated, blended by their windows."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        g, win = self.grid(x.shape, x.device)
        if g.whole:
            args = (x, t, y) if emb_extra is None else (x, t, y, emb_extra)
            return self._fwd(*args)
        extra = () if emb_extra is None else (emb_extra,)
        v = tiled_apply(self._fwd, x, (t, y, *extra), g, self.tile_batch, self.static_batch,
                        win)
        return v.to(x.dtype)


class TiledStudent(nn.Module):
    """A distilled student's one-step translation, tile by tile, blended once.

    ``translate(z, tau, y_src, y_tgt, noise, noise_scale)`` like :meth:`Student.translate`;
    images no larger than the tile go straight to the student (or ``forward``).

    Args:
        student: the student.
        tile: tile side (None: never tile).
        overlap: overlap in pixels.
        tile_batch: tiles per forward.
        margin: the student's receptive-field halo when the tiles are exact (``plan_grid``);
            0 for a network without one (attention, GroupNorm).
        forward: what evaluates a batch of tiles, with ``Student.translate``'s signature
            (default ``student.translate``; an execution engine, ``translate.engine``).
    """

    is_student = True

    def __init__(self, student: nn.Module, tile: int | None, overlap: int,
                 tile_batch: int, margin: int = 0, forward: Callable | None = None) -> None:
        super().__init__()
        self.inner = student
        self.tile, self.overlap, self.tile_batch = tile, int(overlap), max(1, int(tile_batch))
        self.margin = int(margin)
        # not a registered submodule: an engine must not duplicate the weights
        self.__dict__["_fwd"] = forward if forward is not None else student.translate
        self.num_classes = int(student.num_classes)
        self.in_channels = int(student.in_channels)
        self.down_factor = int(student.down_factor)

    @property
    def stochastic(self) -> bool:
        """Whether the student takes noise maps (``models.student.Student.stochastic``)."""
        return bool(getattr(self.inner, "stochastic", False))

    def draw_noise(self, *args, **kwargs):
        """The student's noise maps for the WHOLE image (tiled with it: overlapping tiles see
        the same noise where they overlap)."""
        return self.inner.draw_noise(*args, **kwargs)

    def translate(self, z: torch.Tensor, tau: float, y_src: torch.Tensor,
                  y_tgt: torch.Tensor, noise: torch.Tensor | None = None,
                  noise_scale: float | None = None) -> torch.Tensor:
        """The student's translation over the whole image, tile by tile, blended once
        (``noise``: the whole image's noise maps, cut with it)."""
        g = plan_grid(z.shape, self.tile, self.overlap, self.down_factor,
                      self.margin if self.tile is not None else 0)
        if g.whole:
            return self._fwd(z, tau, y_src, y_tgt, noise, noise_scale)
        c = z.shape[1]

        def one(zt, a, b):
            n = None if zt.shape[1] == c else zt[:, c:]
            return self._fwd(zt[:, :c], tau, a, b, n, noise_scale)

        zn = z if noise is None else torch.cat([z, noise.to(z.dtype)], 1)
        return tiled_apply(one, zn, (y_src, y_tgt), g, self.tile_batch).to(z.dtype)


class TiledCodec:
    """An autoencoder codec applied tile by tile (pixel codecs need no tiles).

    Args:
        codec: a latent codec (``models.codec``) with ``factor`` and ``encode`` / ``decode``.
        tile, overlap: in pixels (multiples of the codec's factor).
        tile_batch: tiles per call.
    """

    def __init__(self, codec, tile: int, overlap: int, tile_batch: int) -> None:
        self.inner, self.tile, self.overlap = codec, int(tile), int(overlap)
        self.tile_batch = max(1, int(tile_batch))
        self.kind, self.factor = codec.kind, int(codec.factor)
        self.image_channels = getattr(codec, "image_channels", None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode pixels to latents tile by tile (blended in latent space)."""
        f = self.factor
        g = plan_grid(x.shape, self.tile, self.overlap - self.overlap % f, f)
        if g.whole:
            return self.inner.encode(x)
        return tiled_apply(self.inner.encode, x, (), g, self.tile_batch, out_scale=(1, f))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents to pixels tile by tile (blended in pixel space)."""
        f = self.factor
        t, o = self.tile // f, (self.overlap // f)
        g = plan_grid(z.shape, t, o, 1)
        if g.whole:
            return self.inner.decode(z)
        return tiled_apply(self.inner.decode, z, (), g, self.tile_batch, out_scale=(f, 1))
