"""The native-resolution half of the Translator: tiles, the memory plan, shape checks, the
working scale and intensity rule of what the run learned (``tiling``, ``memory``, ``learned``).

``NativeMixin`` is a base of :class:`medshift_fast.translator.Translator` (one Translator, two
modules): it reads the translator's ``run``, ``model``, ``codec``, ``settings``, ``device``,
``learned``, ``tile`` / ``overlap`` / ``tile_batch`` / ``max_memory`` and ``factor``.
"""

from __future__ import annotations

from . import memory
from .errors import MedShiftError

__all__ = ["MAX_ASPECT", "NativeMixin"]

MAX_ASPECT = 16.0  # no radiograph is more elongated (long-leg stitches are ~3:1)


class NativeMixin:
    """Tiles, memory plan, degenerate-shape checks, working scale and intensity checks."""

    def _resolve_tile(self, tile, overlap) -> tuple[int | None, int]:
        f = self.factor
        if tile is None or (isinstance(tile, str) and tile.lower() in ("none", "whole", "off")):
            return None, 0
        if isinstance(tile, str) and tile.lower() == "auto":
            t = int(self.learned.tile or self.run.image_size or 128)
            t = max(2 * f, t // f * f)
        else:
            try:
                t = int(tile)
            except (TypeError, ValueError):
                raise MedShiftError(f"tile must be a number of pixels, 'auto' or None, got "
                                    f"{tile!r}") from None
            if t < 2 * f or t % f:
                raise MedShiftError(f"tile {t} must be a multiple of {f} (the network's "
                                    f"downsampling factor) and at least {2 * f} pixels")
        if overlap is None:
            o = (t // 4) // f * f
        else:
            o = int(overlap)
            if o < 0 or o >= t or o % f:
                raise MedShiftError(f"tile overlap {o} must be a multiple of {f} in [0, {t})")
        return t, o

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
                      size: int | str | None = None):
        """The grid a file input of ``shape`` is translated on (``learned.WorkingScale``)."""
        return self.learned.working_scale(shape, spacing_mm, size)

    def check_intensity(self, img, what: str = "image") -> None:
        """Refuse an input far outside the source domain's training intensities."""
        self.learned.check_intensity(img, self.domains[0], what)

    # ---------------------------------------------------------------------------- planning
    def _net_config(self):
        m = self.model
        cfg = getattr(getattr(m, "unet", None), "config", None) or getattr(m, "config", None)
        return cfg if hasattr(cfg, "channel_mult") else None

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
        grid = plan_grid((hm, wm), tile_m, self.overlap // cf, f // cf)
        th, tw = grid.tile
        cfg = self._net_config()
        tile_bytes = (memory.unet_forward_bytes(cfg, th, tw, item) if cfg is not None
                      else 64 * cm * th * tw * 4)
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

    def _tiled(self, tile_batch: int):
        """The network and codec as tiled views (or themselves when not tiling)."""
        from .tiling import TiledCodec, TiledModel, TiledStudent

        if self.tile is None:
            return self.model, self.codec
        cf = int(self.codec.factor)
        t, o = self.tile // cf, self.overlap // cf
        if self.run.kind == "student":
            model = TiledStudent(self.model, t, o, tile_batch)
        else:
            model = TiledModel(self.model, t, o, tile_batch)
        codec = self.codec if self.codec.kind == "pixel" else TiledCodec(
            self.codec, self.tile, self.overlap, tile_batch)
        return model, codec
