"""Native resolution for one Translator: its tiles, its memory plan, degenerate-shape checks and
what the run learned (working scale, intensity rule) -- :class:`NativePlanner`, an object the
:class:`~medshift_fast.translate.Translator` holds (``translator.native``).

Tiles: an image larger than the tile the model was trained on (``tile="auto"``) is translated
in overlapping tiles blended with a smooth window (``tiling``): the velocity at every solver
stage for a flow model (one velocity field over the whole image, as MultiDiffusion does), the
translation once for a one-step student; attention stays inside a tile and memory is flat in
image size. Every call is planned first (``plan``, ``memory``): whole-image buffers plus a tile
batch chosen to fit ``max_memory``; what cannot fit is a MedShiftError before any work.

The overlap rule (the one place it is written): a LOCAL network -- one whose output pixel
depends only on inputs within ``halo`` pixels (``models.receptive_halo``: the lean student's,
derived from its configuration) -- is tiled exactly: the default overlap is 2 x halo rounded up
to the network's factor, the window is 0 on the halo next to a tile's inner edge (a hard cut
between exact pixels), and the default tile is the largest that runs fastest per pixel
(``memory.CPU_LOCAL_TILE`` / ``GPU_LOCAL_TILE``, fitted to the image, never larger than it
needs). Any other network (attention, GroupNorm: no finite halo) keeps the trained tile and a
quarter of it as the overlap, blended with sin^2 ramps.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MedShiftError
from ..models import receptive_halo
from . import memory
from .learned import Learned, WorkingScale

__all__ = ["MAX_ASPECT", "NativePlanner"]

MAX_ASPECT = 16.0  # no radiograph is more elongated (long-leg stitches are ~3:1)


class NativePlanner:
    """Tiles, memory plan and input checks of one translator (fixed at construction).

    Args:
        run: the translator's ``LoadedRun`` (kind, channels, latent mode, training size).
        model, codec: the network and the codec the translator runs.
        settings: the translator's ``TranslationSettings`` (solver, decode, guidance, tile,
            overlap).
        device: where the network runs (the memory budget's device).
        bf16: the forward runs in bf16 (halves the activation estimate).
        tile_batch: tiles per network forward (None: what the memory plan allows, at most
            ``memory.CPU_TILE_BATCH`` on a CPU and ``memory.GPU_TILE_BATCH`` on a GPU).
        max_memory: memory budget of a call in bytes or as "4G" (None:
            ``memory.DEFAULT_FRACTION`` of the memory available when the call starts).
        image_channels: channels of a pixel image.
        source_domain: the source domain's name (its intensity record).
    """

    def __init__(self, run, model, codec, settings, device: torch.device, bf16: bool,
                 tile_batch: int | None, max_memory: int | str | None, image_channels: int,
                 source_domain: str) -> None:
        self.run, self.model, self.codec, self.settings = run, model, codec, settings
        self.device, self.bf16 = device, bool(bf16)
        self.image_channels, self.source_domain = int(image_channels), source_domain
        self.factor = int(getattr(model, "down_factor", 1)) * int(codec.factor)
        self.learned = Learned.from_config(run.config) if run.path is not None else Learned(
            "image_size", run.image_size, None, int(run.image_size or 0) or 128)
        h = receptive_halo(model)
        self.halo = None if h is None else int(h) * int(codec.factor)  # in pixels
        self.tile, self.overlap = self._resolve_tile(settings.tile, settings.overlap)
        self.margin = self.halo if self._exact() else 0
        if tile_batch is not None and (isinstance(tile_batch, bool) or int(tile_batch) < 1):
            raise MedShiftError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = None if tile_batch is None else int(tile_batch)
        self.max_memory = None if max_memory is None else memory.parse_bytes(max_memory)

    def _exact(self) -> bool:
        """Tiles are exact: a local network and an overlap of at least twice its halo."""
        return self.tile is not None and self.halo is not None and self.overlap >= 2 * self.halo

    def _resolve_tile(self, tile, overlap) -> tuple[int | None, int]:
        """(tile, overlap) in pixels from the settings (module docstring: the overlap rule)."""
        f = self.factor
        if tile is None:
            return None, 0
        local = self.halo is not None
        exact = -(-2 * self.halo // f) * f if local else None  # the halo on both sides
        if overlap is not None:
            o = int(overlap)
            if o < 0 or o % f:
                raise MedShiftError(f"tile overlap {o} must be a multiple of {f} and >= 0")
        if tile == "auto" and local:  # exact tiles: the fastest size, fitted to the image
            t = memory.GPU_LOCAL_TILE if self.device.type == "cuda" else memory.CPU_LOCAL_TILE
            t = max(t // f * f, 2 * (exact if overlap is None else o) + f)
        elif tile == "auto":
            t = int(self.learned.tile or self.run.image_size or 128)
            t = max(2 * f, t // f * f)
        else:
            t = int(tile)
            if t < 2 * f or t % f:
                raise MedShiftError(f"tile {t} must be a multiple of {f} (the network's "
                                    f"downsampling factor) and at least {2 * f} pixels")
        if overlap is None:
            o = exact if local else (t // 4) // f * f
        if o >= t:
            why = (f" (this network's receptive field reaches {self.halo} px: exact tiles "
                   f"overlap by {exact})" if local and overlap is None else "")
            raise MedShiftError(f"tile overlap {o} must be smaller than the tile {t}{why}; pass "
                                f"a larger --tile (at least {o + f}) or a smaller --overlap")
        return t, o

    # ------------------------------------------------------------------------------ checks
    @property
    def min_side(self) -> int:
        """The smallest image side translated (the network's deepest level is >= 2 px)."""
        return max(8, 2 * self.factor)

    def check_shape(self, h: int, w: int, what: str = "image") -> None:
        """Refuse degenerate shapes: a side under ``min_side`` or an aspect ratio over
        ``MAX_ASPECT``."""
        h, w = int(h), int(w)
        if min(h, w) < self.min_side:
            raise MedShiftError(f"{what} is {h}x{w} px: too small to translate (this model needs "
                                f"at least {self.min_side} px a side); use a larger image")
        if max(h, w) / min(h, w) > MAX_ASPECT:
            raise MedShiftError(f"{what} is {h}x{w} px: an aspect ratio of "
                                f"{max(h, w) / min(h, w):.0f}:1 is not a radiograph (at most "
                                f"{MAX_ASPECT:g}:1); crop it to the region to translate")

    def working_scale(self, shape: tuple[int, int], spacing_mm: float | None = None,
                      size: int | str | None = None) -> WorkingScale:
        """The grid a file input of ``shape`` is translated on (``learned.WorkingScale``)."""
        return self.learned.working_scale(shape, spacing_mm, size)

    def check_intensity(self, img, what: str = "image", **kw):
        """The intensity rule against the source domain's training record
        (``intensity.decide``: keywords ``source``, ``mode``, ``input_bits``)."""
        return self.learned.check_intensity(img, self.source_domain, what, **kw)

    # ---------------------------------------------------------------------------- planning
    def _net_config(self) -> Any:
        m = self.model
        for owner in (getattr(m, "unet", None), getattr(m, "net", None), m):
            cfg = getattr(owner, "config", None)
            if memory.forward_bytes(cfg, 8, 8) is not None:
                return cfg
        return None

    def plan(self, shape: tuple[int, ...], io_bytes: int = 0, what: str | None = None
             ) -> memory.MemoryPlan:
        """The memory plan of translating a batch of ``shape`` (B, C, H, W) pixels.

        Raises:
            MedShiftError: it cannot fit the budget (``max_memory``), even one tile at a time.
        """
        from .tiling import plan_grid

        b, _, h, w = (int(v) for v in shape)
        f, cf = self.factor, int(self.codec.factor)
        hp, wp = -(-h // f) * f, -(-w // f) * f
        hm, wm = hp // cf, wp // cf
        cm = int(self.run.in_channels)
        item = 2 if self.bf16 else 4
        tile_m = None if self.tile is None else self.tile // cf
        grid = plan_grid((hm, wm), tile_m, self.overlap // cf, f // cf, self.margin // cf)
        th, tw = grid.tile
        cfg = self._net_config()
        tile_bytes = memory.forward_bytes(cfg, th, tw, item) if cfg is not None else None
        if tile_bytes is None:
            tile_bytes = 64 * cm * th * tw * 4
        s = self.settings
        guided = s.guidance_decode not in (0.0, 1.0) or s.guidance_encode not in (0.0, 1.0)
        mult = 2 if guided and self.run.kind != "student" else 1
        bufs = memory.image_buffers(self.run.kind, s.solver, s.decode, s.method, self.run.latent)
        budget = self.max_memory or int(memory.DEFAULT_FRACTION
                                        * memory.available_bytes(self.device))
        cap = self.tile_batch or (memory.GPU_TILE_BATCH if self.device.type == "cuda"
                                  else memory.CPU_TILE_BATCH)
        what = what or f"translating {b} image(s) of {h}x{w} px"
        p = memory.plan(b, cm * hm * wm * 4, bufs, tile_bytes, grid.n_tiles, mult, budget,
                        cap, io_bytes + (self.image_channels * hp * wp * 4 * 3 if self.run.latent
                                         else 0), what)
        if self.tile_batch is not None and grid.n_tiles > 1:
            p = memory.MemoryPlan(p.images, min(p.tile_batch, self.tile_batch), p.n_tiles,
                                  p.peak, p.budget)
        return p

    def tiled(self, tile_batch: int, forward=None):
        """The network and codec as tiled views (or themselves when not tiling).

        Args:
            tile_batch: tiles per forward.
            forward: a one-step student's execution engine (``Student.translate``'s signature;
                ``translate.engine``), used for the tiles and for an untiled image alike.
        """
        from .tiling import TiledCodec, TiledModel, TiledStudent

        cf = int(self.codec.factor)
        if self.tile is None:
            if forward is not None and self.run.kind == "student":
                return TiledStudent(self.model, None, 0, 1, forward=forward), self.codec
            return self.model, self.codec
        t, o = self.tile // cf, self.overlap // cf
        if self.run.kind == "student":
            model = TiledStudent(self.model, t, o, tile_batch, self.margin // cf, forward)
        else:
            model = TiledModel(self.model, t, o, tile_batch)
        codec = self.codec if self.codec.kind == "pixel" else TiledCodec(
            self.codec, self.tile, self.overlap, tile_batch)
        return model, codec
