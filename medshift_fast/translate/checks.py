"""Per-image checks of a translation request, one function each, with one-line messages.

Called by the Translator (the pixel range), by ``medshift translate``'s vetting of every input
(``translate.vet``: the scale decision; the intensity rule is ``translate.intensity``), by
exported engines (``export.engines``: the same pixel-range message) and after a translation
(the hallucination count of the manifest):

* :func:`check_unit_range` -- float pixels must be finite and in [-1, 1] (raw counts are named).
* :func:`check_scale` -- the scale is a decision, not a warning: an input more than
  :data:`SCALE_FACTOR` times from the working scale is refused unless ``--size`` chose.
* :func:`count_hallucinations` -- new compact structures in an output (see its docstring).
"""

from __future__ import annotations

import torch

from ..errors import MedShiftError, option

__all__ = ["COUNT_WINDOW", "RANGE_TOL", "SCALE_FACTOR", "check_scale", "check_unit_range",
           "count_hallucinations", "count_windows", "hallucination_columns"]

RANGE_TOL = 1e-3  # float inputs may exceed [-1, 1] by resampling round-off, no more
#: beyond this factor between the working grid and the input's grid, ``translate`` writes
#: nothing unless ``--size`` was chosen (docs/native.md)
SCALE_FACTOR = 4.0
COUNT_WINDOW = 1024  # the largest side the manifest's hallucination count takes at once


def check_unit_range(x: torch.Tensor, what: str, fix: str) -> None:
    """Refuse float images that are not finite or not in [-1, 1] (raw counts, 0..1 images).

    Args:
        x: float images (any shape).
        what: what is refused, e.g. "Translator" or "this engine".
        fix: what to do instead, appended to the message.
    """
    if not x.is_floating_point():
        raise MedShiftError(f"{what}: expected float images in [-1, 1], got {x.dtype}; {fix}")
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise MedShiftError(f"{what}: the images contain NaN or Inf; only finite images in "
                            f"[-1, 1] are translated; {fix}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - RANGE_TOL or hi > 1.0 + RANGE_TOL:
        kind = (" (raw counts?)" if hi > 2.0 and float(x.round().sub(x).abs().max()) == 0
                else "")
        raise MedShiftError(f"{what}: float images must lie in [-1, 1] (-1 = air / darkest, "
                            f"+1 = bone), got values in [{lo:g}, {hi:g}]{kind}; {fix}")


def check_scale(ws, size_chosen: bool, shape: tuple[int, int], learned) -> None:
    """Refuse a working grid more than :data:`SCALE_FACTOR` x from the input's own grid when
    ``--size`` did not choose it (the run's learned scale was only a default).

    Args:
        ws: the ``learned.WorkingScale`` of the input.
        size_chosen: ``--size`` (``size=``) was given explicitly (native, learned or N).
        shape: the input's (H, W).
        learned: the run's ``learned.Learned`` (what it learned, for the message).

    Raises:
        MedShiftError: one line naming both choices, what each costs, and the real fix.
    """
    k = float(ws.factor)
    if size_chosen or k <= 0 or max(k, 1.0 / k) <= SCALE_FACTOR:
        return
    h, w = int(shape[0]), int(shape[1])
    r = max(k, 1.0 / k)
    side = min(ws.shape)
    coarse = k < 1
    at_learned = option("size", "learned", "'learned'")
    at_side = option("size", str(side), str(side))
    native = option("size", "native", "'native'")
    learned_choice = (f"{at_learned} (or {at_side})" if at_learned else "the learned scale")
    learned_choice += (" works at that scale and resamples back: " + (
        f"detail finer than {r:.0f} input pixels is lost" if coarse
        else "the upsampling adds no detail"))
    native_choice = (f"{native or 'the native grid'} translates on the input's own grid, in "
                     "tiles: the model sees texture at a scale it never learned and may invent "
                     "structure")
    how = "choose one" if at_learned or native else "choose the working size explicitly"
    raise MedShiftError(
        f"the input's {h}x{w} grid is {r:.1f}x from the scale the model learned "
        f"({learned.describe()}; more than {SCALE_FACTOR:g}x): {how} -- {learned_choice}; "
        f"{native_choice}; the real fix is a model trained on native-resolution crops "
        "(medshift train --native --crop N)")


def count_hallucinations(source, output, window: int = COUNT_WINDOW) -> dict:
    """New compact structures in ``output`` that ``source`` does not have beyond its noise
    (count, area, largest z), for the per-run manifest of ``medshift translate``.

    The detector is the hallucination measure ``evaluate`` reports
    (:mod:`medshift_fast.translate.hallucination`; eval/ imports it from there).

    Cheap and flat in memory: a working grid larger than ``window``² is counted in near-equal
    windows of at most that side (the detector's whole-image filters take ~170 bytes a pixel:
    a 3000x2500 grid at once would add more than the tiled translation itself), their counts
    and areas summed, the largest z kept. Up to ``window``² it is the detector's own count.

    Args:
        source: (H, W) source image on the working grid (what the model was given).
        output: (H, W) its translation, same shape.
        window: the largest side counted at once.

    Returns:
        {"count", "area_px", "area_fraction", "max_z", "windows"}.
    """
    from .hallucination import hallucination_stats as detect
    s, o = torch.as_tensor(source).detach().cpu(), torch.as_tensor(output).detach().cpu()
    h, w = int(s.shape[-2]), int(s.shape[-1])
    parts = [detect(s[..., ry, rx], o[..., ry, rx]) for ry, rx in count_windows(h, w, window)]
    area = sum(int(p["area_px"]) for p in parts)
    return {"count": sum(int(p["count"]) for p in parts), "area_px": area,
            "area_fraction": area / float(h * w), "max_z": max(float(p["max_z"]) for p in parts),
            "windows": len(parts)}


def count_windows(h: int, w: int, window: int = COUNT_WINDOW) -> list[tuple[slice, slice]]:
    """The near-equal windows (row slice, column slice) of at most ``window`` a side that
    :func:`count_hallucinations` counts an (h, w) grid in, row by row."""
    ny, nx = -(-int(h) // window), -(-int(w) // window)
    ys = [round(k * h / ny) for k in range(ny + 1)]
    xs = [round(k * w / nx) for k in range(nx + 1)]
    return [(slice(ys[a], ys[a + 1]), slice(xs[b], xs[b + 1])) for a in range(ny)
            for b in range(nx)]


def hallucination_columns(found: dict | None) -> dict:
    """The manifest's hallucination_* fields of one output (empty when not counted)."""
    if found is None:
        return {}
    return {"hallucination_count": found["count"], "hallucination_area_px": found["area_px"],
            "hallucination_max_z": f"{found['max_z']:.2f}"}
