"""Shared pieces of the image readers: the records they return and their error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, MedShiftError, option

PNG_EXT = (".png",)
TIFF_EXT = (".tif", ".tiff")
DICOM_EXT = (".dcm", ".dicom")
IMAGE_EXT = PNG_EXT + TIFF_EXT + DICOM_EXT

#: DICOM Modality codes accepted without ``allow_modality`` (projection X-ray kinds; OT = other).
RADIOGRAPHIC_MODALITIES = frozenset(
    {"CR", "DX", "RF", "XA", "MG", "IO", "PX", "RG", "DF", "CF", "VF", "OT", ""})
_MODALITY_NAMES = {"CT": "computed tomography", "MR": "magnetic resonance", "NM": "nuclear "
                   "medicine", "PT": "PET", "US": "ultrasound", "SEG": "segmentation", "RTDOSE":
                   "radiotherapy dose", "RTSTRUCT": "RT structure set", "SM": "slide microscopy",
                   "XC": "external camera photograph", "OP": "ophthalmic photograph"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    """Cheap header facts used to validate a dataset without decoding pixels.

    Attributes:
        format: "png", "tiff" or "dicom".
        depth: container bit depth ("8", "16", "32", "float") or for DICOM the BitsAllocated.
        shape: (H, W) of the image.
        frames: frames (DICOM NumberOfFrames, TIFF pages, APNG frames) in the file.
        color: the file holds colour (RGB / RGBA / palette / YBR) samples.
        modality: the DICOM Modality ("" when missing); None for PNG / TIFF.
        spacing_mm: the pixel spacing the file declares (DICOM PixelSpacing /
            ImagerPixelSpacing, PNG pHYs, TIFF resolution; the mean of the two axes), else None.
        significant_bits: the significant bits the file declares for its integer samples (PNG
            sBIT, TIFF BitsPerSample / SMaxSampleValue, DICOM BitsStored), else None.
    """

    format: str
    depth: str
    shape: tuple[int, int]
    frames: int = 1
    color: bool = False
    modality: str | None = None
    spacing_mm: float | None = None
    significant_bits: int | None = None


@dataclass(frozen=True)
class DicomMapping:
    """The forward map stored DICOM values -> [-1, 1] applied by :func:`read_image`, and back.

    ``to_unit``: ``x = s * slope + intercept``; ``y = clip((x - lo) / (hi - lo), 0, 1) * 2 - 1``;
    ``y = -y`` for MONOCHROME1. ``lo``/``hi`` are the VOI window ends (``voi`` "LINEAR": PS3.3
    C.11.2.1.2, ``c - 0.5 -+ (w - 1) / 2``; "LINEAR_EXACT": ``c -+ w / 2``) or, for "range", the
    modality values of the smallest and largest stored value. ``from_unit`` inverts it exactly up
    to the rounding to integers and the clip to the stored range.

    Attributes:
        slope, intercept: RescaleSlope / RescaleIntercept (1, 0 when absent).
        lo, hi: modality values mapped to -1 and +1 (before the MONOCHROME1 inversion).
        voi: "LINEAR", "LINEAR_EXACT" (window) or "range" (no window).
        invert: PhotometricInterpretation is MONOCHROME1.
        bits_allocated, bits_stored, high_bit, pixel_representation: the stored sample layout.
        photometric: the PhotometricInterpretation to write (MONOCHROME1 / MONOCHROME2).
    """

    slope: float
    intercept: float
    lo: float
    hi: float
    voi: str
    invert: bool
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric: str

    @property
    def stored_range(self) -> tuple[int, int]:
        """(min, max) stored value the BitsStored / PixelRepresentation allow."""
        b = self.bits_stored
        return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.pixel_representation else (0, 2**b - 1)

    def to_unit(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (any shape) -> float32 in [-1, 1]."""
        x = np.asarray(stored, dtype=np.float64) * self.slope + self.intercept
        y = np.clip((x - self.lo) / (self.hi - self.lo), 0.0, 1.0) * 2.0 - 1.0
        return (-y if self.invert else y).astype(np.float32)

    def from_unit(self, img: np.ndarray) -> np.ndarray:
        """[-1, 1] -> stored integers (round half to even, clipped to the stored range)."""
        u = np.clip(np.asarray(img, dtype=np.float64), -1.0, 1.0)
        u = -u if self.invert else u
        s = (self.lo + (u + 1.0) * 0.5 * (self.hi - self.lo) - self.intercept) / self.slope
        smin, smax = self.stored_range
        kind = "i" if self.pixel_representation else "u"
        return np.clip(np.rint(s), smin, smax).astype(f"<{kind}{self.bits_allocated // 8}")


@dataclass(frozen=True)
class ImageSource:
    """What was read, so that a result can be written back in the input's own kind.

    Attributes:
        path: the file read.
        format: "png", "tiff" or "dicom".
        shape: (H, W) of the image read.
        bits: bits per sample of the grey image to write back: PNG / TIFF container depth (8,
            16, 32; 32 / 64 for float TIFF), DICOM BitsAllocated of the (grey) output.
        dtype: numpy dtype name of those samples ("uint8", "uint16", "int16", "float32", ...).
        color: the input was colour and was converted to grey (BT.601 luma).
        frame: the frame / page read from a multi-frame file (0-based), None if single-frame.
        n_frames: frames / pages in the file.
        invert: the file stores high = dark (DICOM MONOCHROME1, TIFF MINISWHITE).
        float_range: float TIFF only: the range its values were read as, (0, 1) or (-1, 1).
        pixels_per_metre: (x, y) resolution if the file declares one (PNG pHYs, TIFF
            X/YResolution, DICOM PixelSpacing / ImagerPixelSpacing), else None.
        modality: DICOM Modality ("" if missing), None otherwise.
        transfer_syntax: DICOM transfer syntax UID of the input, None otherwise.
        mapping: DICOM only: the exact forward intensity map applied (:class:`DicomMapping`).
        dataset: DICOM only: the input's pydicom Dataset without its pixel data.
        sample_max: PNG / TIFF integers: the sample value mapped to +1 (``2**b - 1`` for the
            significant bits b used; None = the container's maximum).
        sbit: PNG only: the sBIT value the file declared (written back), else None.
        smax_tag: TIFF only: the SMaxSampleValue to write back (declared, or the maximum of a
            BitsPerSample < container file), else None.
    """

    path: Path
    format: str
    shape: tuple[int, int]
    bits: int
    dtype: str
    color: bool = False
    frame: int | None = None
    n_frames: int = 1
    invert: bool = False
    float_range: tuple[float, float] | None = None
    pixels_per_metre: tuple[float, float] | None = None
    modality: str | None = None
    transfer_syntax: str | None = None
    mapping: DicomMapping | None = None
    dataset: Any = field(default=None, compare=False, repr=False)
    sample_max: float | None = None
    sbit: int | None = None
    smax_tag: int | None = None

    @property
    def spacing_mm(self) -> float | None:
        """The pixel spacing in mm (mean of the two axes) if the file declares one."""
        return spacing_from_ppm(self.pixels_per_metre)


@dataclass
class _Header:
    """Everything the probe learnt; the decoder of each format continues from it."""

    format: str
    depth: str
    shape: tuple[int, int]
    frames: int = 1
    color: bool = False
    modality: str | None = None
    extra: dict = field(default_factory=dict)


def _skip_hint() -> str:
    """", or pass --skip-bad to skip it" when the caller can skip bad inputs (else "")."""
    o = option("skip_bad")
    return f" or pass {o} to skip it" if o else ""


def _fail(path, what: str) -> BadInput:
    """A damaged / unreadable file."""
    return BadInput(f"cannot read image {str(path)!r}: {what}; check the file (re-export or "
                    f"delete it){_skip_hint()}", path, what)


def _refuse(path, what: str, remedy: str) -> BadInput:
    """A readable file that is not what the translator takes unless told otherwise."""
    skip = _skip_hint()
    return BadInput(f"refusing image {str(path)!r}: {what}; {remedy}{',' if skip else ''}{skip}",
                    path, what)


def given(name: str, value) -> str:
    """An option value as the caller spelled it: "--input-bits 12" / "input_bits=12"."""
    return option(name, str(value), str(value)) or f"{name}={value}"


def _rgb_refusal(path, kind: str) -> BadInput:
    o = option("allow_rgb")
    conv = (f"pass {o} to convert it to grey (ITU-R BT.601 luma; the result is written grey) "
            "or " if o else "")
    return _refuse(path, f"it is a colour image ({kind}), not a greyscale radiograph",
                   conv + "convert it to greyscale yourself")


def _one_bit_refusal(path, what: str) -> MedShiftError:
    return _refuse(path, f"{what} holds 1-bit samples (a segmentation / bitmap mask, not a "
                   "radiograph)", "remove it from the inputs")


def _luma(rgb: np.ndarray, maxval: float) -> np.ndarray:
    """(H, W, >=3) colour samples -> [-1, 1] grey: BT.601 luma of channels scaled by maxval."""
    c = rgb[..., :3].astype(np.float64)
    y = (c[..., 0] * _LUMA[0] + c[..., 1] * _LUMA[1] + c[..., 2] * _LUMA[2]) / maxval
    return (y * 2.0 - 1.0).astype(np.float32)


def _int_to_unit(a: np.ndarray, bits: int, maxval: float | None = None) -> np.ndarray:
    """Unsigned integers -> [-1, 1]: 0 -> -1, ``maxval`` (default ``2**bits - 1``) -> +1."""
    m = float(2**bits - 1 if maxval is None else maxval)
    out = a.astype(np.float32)
    out *= np.float32(2.0 / m)
    out -= np.float32(1.0)
    return out


def spacing_from_ppm(ppm) -> float | None:
    """(x, y) pixels per metre -> mean pixel spacing in mm (None when unknown or invalid)."""
    if not ppm:
        return None
    try:
        vals = [1000.0 / float(v) for v in ppm if float(v) > 0]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if len(vals) != 2 or not all(np.isfinite(vals)):
        return None
    return float(np.sqrt(vals[0] * vals[1]))


def significant_max(sample_max_data: int, container_bits: int, declared: int | None,
                    override: int | None, path) -> tuple[float, int | None]:
    """The sample value mapped to +1 for integer PNG / TIFF samples, and the bits it means.

    ``override`` (``input_bits``) wins: values above ``2**b - 1`` are an error. A declared
    depth b < container (PNG sBIT, TIFF BitsPerSample / SMaxSampleValue) is used when the data
    fit in b bits (PNG's spec scales such samples up to the container; files that do not, and
    fit in b bits, are mapped by b); otherwise the container's full range.
    """
    if override is not None:
        b = int(override)
        if not 1 <= b <= container_bits:
            raise _refuse(path, f"{given('input_bits', b)} does not fit its {container_bits}-bit "
                          "samples", f"pass {given('input_bits', 'B')} with B between 1 and "
                          f"{container_bits}")
        if sample_max_data > 2**b - 1:
            raise _refuse(path, f"it holds values up to {sample_max_data}, more than "
                          f"{given('input_bits', b)} allows ({2**b - 1})", "pass a larger "
                          "number of bits or leave the option out")
        return float(2**b - 1), b
    if declared is not None and 1 <= declared < container_bits \
            and sample_max_data <= 2**declared - 1:
        return float(2**declared - 1), int(declared)
    return float(2**container_bits - 1), None


