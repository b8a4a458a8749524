"""Memory planned before any work: the peak of a translation request, and a budget.

A request is (images per chunk) x (whole-image buffers) + (tiles per forward) x (one tile's
activations) + the working set of the file I/O. The network's inference activations are counted
from its configuration (``unet_forward_bytes``: the skip tensors the U-Net keeps, the largest
residual block's temporaries, and the attention score matrices heads x N^2 as the math path
materialises them -- an upper bound where a fused attention kernel runs), the whole-image buffers
from the solver (``image_buffers``). ``plan`` picks the largest tile batch (up to a cap) and image
chunk that fit the budget and raises a :class:`~medshift_fast.errors.MedShiftError` naming the
sizes when even one tile of one image does not.

The budget (``--max-memory``) defaults to ``DEFAULT_FRACTION`` of the memory available now: the
kernel's MemAvailable on the CPU, the free memory of the GPU on CUDA. ``benchmarks/bench_native.py``
measures the real peak (resident set of a child process) beside this estimate.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from ..errors import MedShiftError

__all__ = ["CPU_LOCAL_TILE", "CPU_TILE_BATCH", "DEFAULT_FRACTION", "GPU_LOCAL_TILE",
           "GPU_TILE_BATCH", "MemoryPlan", "available_bytes", "format_bytes", "forward_bytes",
           "image_buffers", "lean_forward_bytes", "parse_bytes", "plan", "unet_forward_bytes"]

DEFAULT_FRACTION = 0.5
# Tiles per forward when the caller does not say: on a CPU wider batches are slower and take more
# memory (benchmarks/bench_native.py, its tile-batch rows: one thread is fastest at 1, two at
# about 4); a GPU wants wide batches.
CPU_TILE_BATCH, GPU_TILE_BATCH = 4, 64
# The tile of a LOCAL network (a one-step student with a known receptive field, whose tiles are
# exact at any size) when the caller does not say: the halo overlap is paid once per tile edge,
# so larger tiles waste less, but on a CPU the time per pixel of the lean student grows past
# ~512 px as a tile's activations leave the caches (benchmarks/bench_lean.py, its tile rows);
# a GPU takes the whole image where memory allows. The memory plan shrinks either to the budget.
CPU_LOCAL_TILE, GPU_LOCAL_TILE = 512, 4096
# allocator slack and temporaries not modelled (estimate vs measured: results/native_cpu.md)
SAFETY = 1.5
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
          "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40,
          "tib": 2**40}


def parse_bytes(v) -> int:
    """'4G', '512MB', '1.5 GiB', 2e9 -> bytes (binary units); MedShiftError otherwise."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        n = float(v)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(v))
        if not m or m.group(2).lower() not in _UNITS:
            raise MedShiftError(f"--max-memory {v!r}: give a size such as 4G, 512M or 2.5GB")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(n) or n <= 0:
        raise MedShiftError(f"--max-memory must be a positive size, got {v!r}")
    return int(n)


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (e.g. 1.5 GB)."""
    for unit, f in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory available for new allocations now: MemAvailable (CPU) or the GPU's free memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # no way to ask: assume a small machine


def unet_forward_bytes(cfg, h: int, w: int, itemsize: int = 4) -> int:
    """Peak activation bytes of ONE image (h, w) through a ``UNetConfig`` network, inference.

    The skip tensors of the down path stay alive until the up path consumes them; on top of
    them the largest block's temporaries (input, norm, activation, convolution outputs: ~5
    tensors of its widest side; the up path's concatenation) and, at attention resolutions,
    q/k/v plus two heads x N x N score matrices (N = tokens at that resolution).
    """
    ch = int(cfg.model_channels)
    mult = tuple(cfg.channel_mult)
    att = set(cfg.attention_ds)
    heads = lambda c: max(1, c // int(cfg.head_channels))  # noqa: E731

    def px(ds):
        return -(-h // ds) * -(-w // ds)

    skips = [ch * px(1)]
    peak_block = 5 * max(ch, cfg.in_channels) * px(1)
    cur, ds = ch, 1

    def block(cin, cout, ds, attn):
        t = 5 * max(cin, cout) * px(ds)
        if attn:
            n = px(ds)
            t = max(t, 4 * cout * n + 2 * heads(cout) * n * n)
        return t

    for level, m in enumerate(mult):
        for _ in range(cfg.num_res_blocks):
            peak_block = max(peak_block, block(cur, m * ch, ds, ds in att))
            cur = m * ch
            skips.append(cur * px(ds))
        if level != len(mult) - 1:
            ds *= 2
            skips.append(cur * px(ds))
    peak_block = max(peak_block, block(cur, cur, ds, getattr(cfg, "mid_attention", True)))
    for level, m in reversed(list(enumerate(mult))):
        for i in range(cfg.num_res_blocks + 1):
            cin = cur + (skips.pop() // px(ds) if skips else 0)
            peak_block = max(peak_block, block(cin, m * ch, ds, ds in att) + cin * px(ds))
            cur = m * ch
            if level and i == cfg.num_res_blocks:
                ds //= 2
    total = sum(skips) + peak_block
    return int(SAFETY * itemsize * total)


def lean_forward_bytes(cfg, h: int, w: int, itemsize: int = 4) -> int:
    """Peak activation bytes of ONE image (h, w) through a ``models.lean.LeanConfig`` network.

    The input with its noise maps and their pixel-unshuffled copy, the skip of every level
    above the deepest, ~5 tensors of the widest level's side inside a residual block (input,
    activation, convolution, FiLM, activation), and the residual and the output at full size.
    """
    r = int(cfg.unshuffle)
    cin = int(cfg.in_channels) + int(cfg.noise_channels)

    def px(level):
        ds = r * 2 ** level
        return -(-h // ds) * -(-w // ds)

    levels = [int(c) * px(i) for i, c in enumerate(cfg.widths)]
    total = 2 * cin * h * w + sum(levels[:-1]) + 5 * max(levels) + 2 * int(cfg.in_channels) * h * w
    return int(SAFETY * itemsize * total)


def forward_bytes(cfg, h: int, w: int, itemsize: int = 4) -> int | None:
    """Activation bytes of one (h, w) image through the network ``cfg`` describes (a
    ``UNetConfig`` or a ``LeanConfig``); None for a configuration it does not know."""
    if hasattr(cfg, "channel_mult"):
        return unet_forward_bytes(cfg, h, w, itemsize)
    if hasattr(cfg, "unshuffle") and hasattr(cfg, "widths"):
        return lean_forward_bytes(cfg, h, w, itemsize)
    return None


def image_buffers(kind: str, solver: str, decode: str, method: str, latent: bool = False) -> int:
    """Whole-image tensors (in units of one model-space image) alive during a translation.

    Student: input, blended output and the residual sum. Flow: the ODE state and the next
    state, the guided batch [x, x] and its velocity (2 + 2), the blend accumulators, the
    solver's accumulator and evaluation point (midpoint/heun/rk4), the SDE's noise and drift,
    and the pipeline's input and output copies.
    """
    if kind == "student":
        n = 5
    else:
        n = 10 + (0 if solver == "euler" else 2) + (2 if decode == "sde" or method == "sdedit"
                                                    else 0)
    return n + (2 if latent else 0)


@dataclass(frozen=True)
class MemoryPlan:
    """How a request runs within its budget.

    Attributes:
        images: images per chunk (each chunk is one translation call of the network loop).
        tile_batch: tiles per network forward (1 when the image is not tiled: the forward then
            takes the chunk's images, or twice that with guidance).
        n_tiles: tiles per image.
        peak: the estimated peak bytes of one chunk.
        budget: the budget in bytes.
    """

    images: int
    tile_batch: int
    n_tiles: int
    peak: int
    budget: int

    def describe(self) -> str:
        """The plan in one line (images per chunk, tiles, estimated peak of the budget)."""
        return (f"{self.images} image(s) per chunk, {self.n_tiles} tile(s) per image, "
                f"{self.tile_batch} per forward; est. peak {format_bytes(self.peak)} of "
                f"{format_bytes(self.budget)}")


def plan(n_images: int, image_bytes: int, buffers: int, tile_bytes: int, n_tiles: int,
         forward_mult: int, budget: int, max_tile_batch: int = CPU_TILE_BATCH,
         io_bytes: int = 0, what: str = "this request") -> MemoryPlan:
    """The largest image chunk and tile batch whose estimated peak fits ``budget``.

    Args:
        n_images: images in the request.
        image_bytes: bytes of one model-space image (float32).
        buffers: whole-image tensors per image (``image_buffers``).
        tile_bytes: activation bytes of one tile's forward (``unet_forward_bytes``); for an
            untiled image, of the whole image.
        n_tiles: tiles per image (1: not tiled).
        forward_mult: forwards' batch per image (2 with two-sided guidance, else 1).
        budget: bytes available to the request.
        max_tile_batch: cap on tiles per forward (more rarely pays on a CPU).
        io_bytes: the file I/O's working set (decoded input and output arrays).
        what: the request, for the error message.

    Raises:
        MedShiftError: one tile of one image does not fit.
    """
    fixed = buffers * image_bytes + io_bytes
    if n_tiles == 1:  # untiled: the forward takes the chunk's images together
        per_image = fixed + forward_mult * tile_bytes
        k = min(n_images, budget // max(per_image, 1))
        if k < 1:
            raise MedShiftError(
                f"{what} needs ~{format_bytes(per_image)} (whole-image forward "
                f"{format_bytes(forward_mult * tile_bytes)} + buffers {format_bytes(fixed)}) "
                f"but the memory budget is {format_bytes(budget)}; translate it in tiles "
                "(--tile, the default), at a smaller --size, or raise --max-memory")
        return MemoryPlan(int(k), 1, 1, int(k * per_image), int(budget))
    one = fixed + tile_bytes
    if one > budget:
        raise MedShiftError(
            f"{what} needs ~{format_bytes(one)} (whole-image buffers {format_bytes(fixed)} + "
            f"one tile {format_bytes(tile_bytes)}) but the memory budget is "
            f"{format_bytes(budget)}; translate at a smaller --size or raise --max-memory")
    k = max(1, min(n_images, (budget - tile_bytes * max_tile_batch) // max(fixed, 1)))
    k = int(min(k, n_images))
    tb = int(max(1, min(max_tile_batch, k * n_tiles * forward_mult,
                        (budget - k * fixed) // max(tile_bytes, 1))))
    return MemoryPlan(k, tb, int(n_tiles), int(k * fixed + tb * tile_bytes), int(budget))
