"""The intensity rule: is an input's intensity distribution one the model saw, and what to do.

A run records, per training domain, percentiles of the mapped values (``learned.domain_stats``,
``PERCENTILES``). :func:`decide` compares one decoded input (float in [-1, 1], or raw uint16
counts) with the source domain's record and returns a :class:`Verdict`:

* **in range** -- its p1..p99 lie within the domain's p0.5..p99.5 (widened by ``MARGIN`` of the
  domain's p1..p99 width) and span at least half of it: translated.
* **outside** -- otherwise, but not far: translated with a one-line warning naming its
  percentiles and the training range, and the choice ``--intensity match``.
* **far** -- its p1..p99 span is under ``MIN_SPAN_RATIO`` of the domain's, or its median lies
  outside the domain's p0.5..p99.5 by more than that range's width. Then, with ``mode="check"``:

  - a **container / bit-depth mismatch** (integer samples mapped by their container's depth,
    none declared, all of them fitting in b <= depth - 2 bits: 12-bit data in a 16-bit PNG;
    claimed for images of at least ``MISMATCH_PIXELS`` pixels) is refused naming
    ``--input-bits b``;
  - a **radiograph** (a PNG / TIFF, a DICOM of a projection X-ray modality, a raw array) is
    plausibly the same modality: translated with the warning;
  - anything else (a CT or MR slice let in by ``--allow-modality``) is refused naming
    ``--intensity match`` and ``--intensity as-is``.

``mode="as-is"`` translates whatever the verdict (recorded, no warning); ``mode="match"`` maps
the input's percentiles onto the domain's (a monotone piecewise-linear map of [-1, 1] onto
itself through the ``PERCENTILES`` knots, -1 and +1 fixed) before the translation and the
output back through the inverse map after it, so the output keeps the input's intensity scale;
the knots are in :attr:`Verdict.note` (DerivationDescription, manifest). A run without records
checks nothing (``mode="match"`` is refused: nothing to match onto).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.io import RADIOGRAPHIC_MODALITIES
from ..errors import MedShiftError, offering, option

__all__ = ["DEFAULT_MODE", "INTENSITY_MODES", "MARGIN", "MIN_SPAN_RATIO", "PERCENTILES",
           "Verdict", "decide", "percentiles"]

PERCENTILES = (0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5)
INTENSITY_MODES = ("check", "as-is", "match")
DEFAULT_MODE = "check"  # the one default of --intensity / mode=
MIN_SPAN_RATIO = 0.25  # a p1..p99 span under 1/4 of the domain's is "far"
MARGIN = 0.1  # "in range": within the domain's p0.5..p99.5 widened by 10 % of its p1..p99 width
MISMATCH_PIXELS = 4096  # fewer pixels may all fit in b bits by chance: no mismatch is claimed
U16_MAX = 65535.0


def _unit(img) -> tuple[np.ndarray, int | None]:
    """(float32 values in [-1, 1], container bits of raw uint16 input or None), flattened."""
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint16:
        img = img.detach().cpu().to(torch.int32).numpy().astype(np.uint16)
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.dtype == np.uint16:
        return (a.astype(np.float32).ravel() * np.float32(2.0 / U16_MAX) - 1.0), 16
    return np.asarray(a, dtype=np.float32).ravel(), None


def percentiles(values: np.ndarray, qs=PERCENTILES, max_pixels: int = 1_000_000) -> np.ndarray:
    """Percentiles of ``values`` (evenly strided to at most ``max_pixels``)."""
    v = values[:: max(1, values.size // max_pixels)]
    return np.percentile(v, qs).astype(np.float64)


def _knots(p: dict) -> np.ndarray | None:
    try:
        return np.array([float(p[f"{q:g}"]) for q in PERCENTILES])
    except (KeyError, TypeError, ValueError):
        return None


def _increasing(k: np.ndarray) -> np.ndarray:
    """Strictly increasing knots (ties, e.g. a clipped domain's p0.5 = p1 = -1, split)."""
    return np.maximum.accumulate(k + np.arange(k.size) * 1e-6)


@dataclass(frozen=True)
class Verdict:
    """What the intensity rule decided for one input.

    Attributes:
        status: "unchecked" (the run records nothing) | "in range" | "outside" | "far".
        mode: check | as-is | match.
        image, domain: the input's and the domain's p1 / p50 / p99 (None when unchecked).
        warning: the one line to print (None: nothing to say).
        knots: ``match`` only: (input knots, domain knots) at ``PERCENTILES``.
    """

    status: str
    mode: str
    image: tuple[float, float, float] | None = None
    domain: tuple[float, float, float] | None = None
    warning: str | None = None
    knots: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def note(self) -> str:
        """One line for the manifest's ``intensity`` column and the output's metadata."""
        if self.status == "unchecked":
            return "unchecked (the run records no training intensities)"
        rng = f"p1/p50/p99 {_fmt(self.image)} vs training {_fmt(self.domain)}"
        if self.mode == "match":
            src, dst = self.knots
            qs = ",".join(f"{q:g}" for q in PERCENTILES)
            return (f"matched (--intensity match): percentiles {qs} {_fmt(src)} -> "
                    f"{_fmt(dst)} before, inverse after; {rng}")
        if self.mode == "as-is":
            return f"as read (--intensity as-is), {self.status}: {rng}"
        return f"{self.status}{' (warned)' if self.warning else ''}: {rng}"

    def apply(self, img):
        """The input mapped onto the domain's percentiles (``match``), else ``img`` itself."""
        if self.knots is None:
            return img
        return _piecewise(img, *self.knots)

    def restore(self, out):
        """An output mapped back to the input's intensity scale (``match``), else ``out``."""
        if self.knots is None:
            return out
        src, dst = self.knots
        return _piecewise(out, dst, src)


def _fmt(v) -> str:
    return "/".join(f"{x:+.3f}" for x in v)


def _piecewise(img, xs, ys):
    """The monotone map of [-1, 1] onto itself through the knots (xs -> ys), with -1 -> -1 and
    +1 -> +1 beyond them (a bijection: the inverse map is the same with the knots swapped).
    ``img``: float pixels in [-1, 1] or raw uint16 counts (mapped as a 16-bit container), array
    or tensor; the result has its type, shape, dtype and device."""
    xk = _increasing(np.clip(np.concatenate([[-1.0], xs, [1.0]]), -1.0, 1.0))
    yk = _increasing(np.clip(np.concatenate([[-1.0], ys, [1.0]]), -1.0, 1.0))
    t = img if isinstance(img, torch.Tensor) else None
    if t is not None:
        raw = t.dtype == torch.uint16
        a = (t.detach().cpu().to(torch.int32) if raw else t.detach().cpu()).numpy()
    else:
        a = np.asarray(img)
        raw = a.dtype == np.uint16
    u = a.astype(np.float64)
    if raw:
        u = u * (2.0 / U16_MAX) - 1.0
    out = np.clip(np.interp(u, xk, yk), -1.0, 1.0)
    out = np.rint((out + 1.0) * (U16_MAX / 2.0)).astype(np.uint16) if raw else out.astype(a.dtype)
    if t is None:
        return out
    o = torch.from_numpy(out.astype(np.int32)).to(torch.uint16) if raw else torch.from_numpy(out)
    return o.to(t.device)


def _container_bits(v: np.ndarray, source, raw_bits: int | None,
                    input_bits: int | None) -> tuple[int, int, int] | None:
    """(b, container depth, largest raw value) when integer samples mapped by an undeclared
    container depth all fit in b <= depth - 2 bits; else None."""
    if input_bits is not None:
        return None
    depth = raw_bits
    if source is not None and source.format in ("png", "tiff"):
        if source.sample_max is None and not source.dtype.startswith("float") \
                and not getattr(source, "invert", False):
            depth = int(source.bits)
    elif source is not None and source.format == "dicom" and source.mapping is not None:
        m = source.mapping
        if m.voi == "range" and not m.invert and not m.pixel_representation \
                and (m.slope, m.intercept) == (1.0, 0.0):
            depth = int(m.bits_stored)
    if not depth or depth < 10 or v.size < MISMATCH_PIXELS:
        return None
    raw = int(round((float(v.max()) + 1.0) / 2.0 * (2**depth - 1)))
    for b in (8, 10, 12, 14):
        if b <= depth - 2 and raw <= 2**b - 1:
            return b, depth, raw
    return None


def _radiograph(source) -> tuple[bool, str]:
    """(plausibly a projection radiograph, what it is): non-DICOMs and raw arrays count."""
    if source is None or source.format != "dicom":
        return True, ""
    mod = str(source.modality or "").upper()
    return mod in RADIOGRAPHIC_MODALITIES, f"DICOM Modality {mod}"


def decide(img, record: dict | None, domain: str, what: str = "image", *, source=None,
           mode: str = DEFAULT_MODE, input_bits: int | None = None) -> Verdict:
    """The intensity rule for one input (see the module docstring).

    Args:
        img: the decoded input: float in [-1, 1] (any shape) or raw uint16 counts (a 16-bit
            container, as the Translator maps them).
        record: the source domain's intensity record (``learned.domain_stats``), or None.
        domain: the source domain's name (for messages).
        what: the input named in messages, e.g. "image 'scan.dcm'".
        source: the ``data.io.ImageSource`` it was read with (container, declared bits,
            modality), or None for an array.
        mode: check | as-is | match.
        input_bits: the ``--input-bits`` it was read with (None: what the file declares).

    Raises:
        MedShiftError: a refusal (see the module docstring), or ``match`` without a record.
            The options it names are the caller's (``errors.option``): ``--input-bits 12`` /
            ``--intensity match`` in ``medshift translate``, ``input_bits=12`` /
            ``intensity='match'`` in ``translate_files``, ``mode='match'`` and a mapping to do
            (``read_image(path, input_bits=12)``) in a direct call.
    """
    with offering({"intensity": "mode"}):  # a caller's own declaration comes first
        return _decide(img, record, domain, what, source, mode, input_bits)


def _mode(value: str) -> str | None:
    """How the caller chooses intensity mode ``value`` (None: it cannot)."""
    return option("intensity", value, repr(value))


def _either(*choices: tuple[str | None, str]) -> str:
    """"pass A to ..., or B to ..." of the choices the caller has ((option, what it does))."""
    told = [f"{o} {what}" for o, what in choices if o]
    return "pass " + ", or ".join(told) if told else ""


def _decide(img, record, domain, what, source, mode, input_bits) -> Verdict:
    if mode not in INTENSITY_MODES:
        raise MedShiftError(f"unknown intensity mode {mode!r}; choose one of "
                            f"{', '.join(INTENSITY_MODES)}")
    dom = _knots((record or {}).get("percentiles") or {})
    if dom is None:
        if mode == "match":
            other = [o for o in (_mode("check"), _mode("as-is")) if o]
            raise MedShiftError(f"{what}: matching intensities needs the intensities the run "
                                f"recorded for {domain} in training and this run has none "
                                "(trained before they were recorded: add them with "
                                "scripts/record_learned.py RUN)"
                                + (f"; use {' or '.join(other)}" if other else ""))
        return Verdict("unchecked", mode)
    v, raw_bits = _unit(img)
    q = percentiles(v)
    i1, i50, i99 = 1, 3, 5  # indices of p1, p50, p99 in PERCENTILES
    lo, hi, lo0, hi0 = dom[i1], dom[i99], dom[0], dom[-1]
    w, w0 = max(hi - lo, 1e-6), max(hi0 - lo0, 1e-6)
    span = q[i99] - q[i1]
    far = span < MIN_SPAN_RATIO * w or not (lo0 - w0 <= q[i50] <= hi0 + w0)
    inside = (not far and q[i1] >= lo0 - MARGIN * w and q[i99] <= hi0 + MARGIN * w
              and span >= 0.5 * w)
    status = "far" if far else "in range" if inside else "outside"
    image = (float(q[i1]), float(q[i50]), float(q[i99]))
    ref = (float(lo), float(dom[i50]), float(hi))
    if mode == "match":
        return Verdict(status, mode, image, ref, None,
                       (tuple(_increasing(q).tolist()), tuple(_increasing(dom).tolist())))
    if mode == "as-is" or status == "in range":
        return Verdict(status, mode, image, ref)
    seen = (f"p1/p50/p99 {_fmt(image)} in [-1, 1] where the model saw {_fmt(ref)} for "
            f"{domain} in training")
    if far:
        mismatch = _container_bits(v, source, raw_bits, input_bits)
        if mismatch is not None:
            b, depth, raw = mismatch
            bits = option("input_bits", str(b), str(b))
            fix = _either((bits, f"to map 0..{2**b - 1} to the full range"),
                          (_mode("as-is"), "to translate it as read"))
            raise MedShiftError(
                f"{what}: its values all fit in {b} bits (largest {raw} of its {depth}-bit "
                f"container, which does not declare {b} bits), so it reads almost black "
                f"({seen}); " + (fix if bits else f"map 0..{2**b - 1} to the full range first "
                                 f"(a file: read_image(path, input_bits={b}))"
                                 + (f", or {fix}" if fix else "")))
        ok, kind = _radiograph(source)
        if not ok:
            fix = _either((_mode("match"), "to map its percentiles onto the training ones (and "
                           "the output back)"), (_mode("as-is"), "to translate it as read"))
            raise MedShiftError(
                f"{what}: its intensities lie far outside what the model saw ({seen}) and it "
                f"is not a radiograph ({kind}): translating it as read would invent an image; "
                + (fix or "map its intensities onto the training range first"))
    fix = _either((_mode("match"), "to map its percentiles onto the training ones and back"),
                  (_mode("as-is"), "to silence this"))
    warning = (f"{what}: intensities {'far ' if far else ''}outside the training range "
               f"({seen}); translated as read" + (f" -- {fix}" if fix else ""))
    return Verdict(status, mode, image, ref, warning)
