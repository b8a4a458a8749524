"""What a model learned about its inputs: the pixel scale and the intensity rule.

Recorded at training in the run's ``config.json`` under ``"learned"`` (``record``) and read back
by :class:`Learned` (``run.LoadedRun.learned``); the :class:`~medshift_fast.translator.Translator`
applies it to every input:

* **Scale.** A model learns textures at the pixel scale it was trained on. ``kind`` is
  ``"image_size"`` (every training image resized to ``size`` px on its short side: the scale is
  "one image = size px"), ``"native"`` (random crops of the images' own pixel grid, spacing
  unknown) or ``"spacing"`` (the native grid with a known pixel spacing ``spacing_mm``, from
  DICOM PixelSpacing / ImagerPixelSpacing, PNG pHYs or TIFF resolution). ``working_scale``
  picks the grid an input is translated on: a ``spacing`` model resamples an input of known
  spacing to its own spacing and back; a ``native`` model translates on the input's grid; an
  ``image_size`` model resizes the short side to ``size`` (the scale it learned) unless asked for
  ``size="native"``. Whatever is chosen is described (and a one-line warning given when the
  input is more than 2x from the scale the model learned).
* **Intensity.** Integer samples are mapped to [-1, 1] by the significant bits the file
  declares (DICOM BitsStored, PNG sBIT, TIFF BitsPerSample / SMaxSampleValue), else by the
  container depth; DICOM through its modality LUT and VOI window. Per training domain the run
  records the containers, the declared bits and percentiles of the mapped values.
  ``check_intensity`` applies the intensity rule (``translate.intensity``): in range ->
  translate; outside -> translate with a warning (or ``--intensity match``); a container /
  bit-depth mismatch -> refused naming ``--input-bits N``; never translated silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MedShiftError, option
from .intensity import PERCENTILES, Verdict, decide

__all__ = ["PERCENTILES", "Learned", "WorkingScale", "domain_stats", "record"]

SCALE_KINDS = ("image_size", "native", "spacing")
WARN_RATIO = 2.0


def domain_stats(images, containers: dict[str, int] | None = None,
                 bits: dict[str, int] | None = None, max_pixels: int = 2_000_000) -> dict:
    """The intensity record of one domain from its mapped images (arrays in [-1, 1]).

    Args:
        images: iterable of arrays/tensors (any shape) of one domain.
        containers: {"png:16": count, ...} of the files.
        bits: {"12": count, ...} declared significant bits of the files.
        max_pixels: pixels sampled (evenly strided) over all images for the percentiles.
    """
    arrs = [np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a,
                       dtype=np.float32).ravel() for a in images]
    n = len(arrs)
    total = sum(a.size for a in arrs)
    step = max(1, total // max_pixels)
    vals = np.concatenate([a[::step] for a in arrs]) if arrs else np.zeros(1, np.float32)
    p = np.percentile(vals, PERCENTILES).astype(float)
    return {"n_images": n, "containers": dict(containers or {}), "bits": dict(bits or {}),
            "percentiles": dict(zip([f"{q:g}" for q in PERCENTILES], [round(v, 5) for v in p]))}


def record(scale_kind: str, size: int | None, spacing_mm: float | None, tile: int,
           domains: dict[str, dict]) -> dict[str, Any]:
    """The ``config.json["learned"]`` entry written at training."""
    if scale_kind not in SCALE_KINDS:
        raise MedShiftError(f"unknown scale kind {scale_kind!r}")
    return {"scale": {"kind": scale_kind, "size": size, "spacing_mm": spacing_mm},
            "tile": int(tile),
            "intensity": {"rule": "declared-bits", "domains": domains}}


@dataclass(frozen=True)
class WorkingScale:
    """The grid an input is translated on.

    Attributes:
        shape: the working (h, w) before padding to the network's factor.
        factor: working pixels per input pixel (1 = the input's own grid).
        how: "native" | "image_size" | "spacing" | "size" (an explicit --size).
        note: one line for DerivationDescription / manifest.csv.
        warning: one line when the input is more than 2x from the learned scale, else None.
    """

    shape: tuple[int, int]
    factor: float
    how: str
    note: str
    warning: str | None = None


@dataclass(frozen=True)
class Learned:
    """A run's ``learned`` record (defaults derived from the training config for old runs).

    Attributes:
        scale_kind: image_size | native | spacing.
        size: the training image size (image_size) or crop (native / spacing).
        spacing_mm: the pixel spacing learned (spacing), else None.
        tile: the tile side the model was trained on (pixels).
        domains: per-domain intensity records (``domain_stats``); empty when unknown.
    """

    scale_kind: str
    size: int | None
    spacing_mm: float | None
    tile: int
    domains: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Learned:
        """What a run's config.json records (older runs: their training size)."""
        train = config.get("train") or {}
        rec = config.get("learned")
        if isinstance(rec, dict) and isinstance(rec.get("scale"), dict):
            sc = rec["scale"]
            kind = sc.get("kind", "image_size")
            if kind not in SCALE_KINDS:
                raise MedShiftError(f"run config: unknown learned scale kind {kind!r}")
            return cls(kind, sc.get("size"), sc.get("spacing_mm"),
                       int(rec.get("tile") or train.get("image_size") or 128),
                       dict((rec.get("intensity") or {}).get("domains") or {}))
        size = train.get("image_size")
        if size in (None, "native"):
            return cls("native", train.get("crop"), None, int(train.get("crop") or 128))
        return cls("image_size", int(size), None, int(size))

    # --------------------------------------------------------------------------------- scale
    def describe(self) -> str:
        """The learned scale in words, for messages and metadata."""
        if self.scale_kind == "image_size":
            return f"{self.size}-px images"
        if self.scale_kind == "spacing":
            return f"{self.spacing_mm:g} mm pixels (native-grid crops)"
        return "native-grid crops (pixel spacing unknown)"

    def working_scale(self, shape: tuple[int, int], spacing_mm: float | None = None,
                      size: int | str | None = None) -> WorkingScale:
        """The working grid of an input of ``shape`` (H, W) and pixel spacing (mm, or None).

        Args:
            size: None (the learned scale), "native" (the input's own grid) or an int (the
                short side resized to it).
        """
        h, w = int(shape[0]), int(shape[1])
        short = min(h, w)
        learned = self.describe()

        def resized(k: float, how: str, note: str, warn: str | None) -> WorkingScale:
            if abs(k - 1.0) < 1e-9:
                return WorkingScale((h, w), 1.0, how, note, warn)
            return WorkingScale((max(1, round(h * k)), max(1, round(w * k))), k, how, note, warn)

        if size not in (None, "native"):
            s = int(size)
            k = s / short
            return resized(k, "size", f"working {s} px on the short side (--size {s}, "
                           f"{k:.3g}x the input grid; model learned {learned})",
                           self._ratio_warning(k, spacing_mm))
        if size == "native" or self.scale_kind == "native":
            note = f"native grid (1x); model learned {learned}"
            return WorkingScale((h, w), 1.0, "native", note, self._ratio_warning(1.0, spacing_mm))
        if self.scale_kind == "spacing":
            if spacing_mm is None:
                return WorkingScale((h, w), 1.0, "native", f"native grid (input pixel spacing "
                                    f"unknown); model learned {learned}", None)
            k = spacing_mm / float(self.spacing_mm)
            warn = None
            if max(k, 1 / k) > WARN_RATIO:
                warn = (f"input pixel spacing {spacing_mm:g} mm is {max(k, 1 / k):.1f}x from the "
                        f"{self.spacing_mm:g} mm the model learned: resampled {k:.3g}x to it and "
                        "back")
            return resized(k, "spacing", f"resampled {k:.3g}x to the learned "
                           f"{self.spacing_mm:g} mm pixel spacing and back", warn)
        k = int(self.size) / short
        warn = None
        if max(k, 1 / k) > WARN_RATIO:
            native = option("size", "native", "'native'")
            warn = (f"translating at the model's {self.size}-px scale: {max(k, 1 / k):.1f}x "
                    f"{'coarser' if k < 1 else 'finer'} than the input's {h}x{w} grid (the "
                    f"model learned {learned})" + (f"; pass {native} to translate at full "
                                                   "resolution, in tiles" if native else ""))
        return resized(k, "image_size", f"resized {k:.3g}x to the model's {self.size}-px "
                       "scale and back", warn)

    def _ratio_warning(self, k: float, spacing_mm: float | None) -> str | None:
        """Warning when the working grid is > 2x from the learned scale (if that is known)."""
        if self.scale_kind == "spacing" and spacing_mm is not None:
            r = (spacing_mm / k) / float(self.spacing_mm)
            if max(r, 1 / r) > WARN_RATIO:
                return (f"working pixel spacing {spacing_mm / k:g} mm is {max(r, 1 / r):.1f}x "
                        f"from the {self.spacing_mm:g} mm the model learned")
        return None

    def size_warning(self, working: tuple[int, int]) -> str | None:
        """image_size models: a working grid > 2x the learned image size (e.g. --size native)."""
        if self.scale_kind != "image_size" or not self.size:
            return None
        r = min(working) / int(self.size)
        if max(r, 1 / r) > WARN_RATIO:
            return (f"the working grid {working[0]}x{working[1]} is {max(r, 1 / r):.1f}x "
                    f"{'larger' if r > 1 else 'smaller'} than the {self.size}-px images the "
                    "model learned: textures are at a scale it has not seen")
        return None

    # ----------------------------------------------------------------------------- intensity
    def check_intensity(self, img, domain: str, what: str, **kw) -> Verdict:
        """The intensity rule (``intensity.decide``) against ``domain``'s training record
        (``source``, ``mode``, ``input_bits`` as keywords). Unknown records (old runs) check
        nothing."""
        return decide(img, self.domains.get(domain), domain, what, **kw)
