"""Image reading and vetting: PNG (8/16-bit), TIFF and DICOM to float32 in [-1, 1].

Intensity convention: -1 is the darkest representable value (air on a radiograph as displayed),
+1 the brightest (bone). Each format is mapped by what the file itself declares:

* PNG / TIFF integers: ``x / (2**bits - 1) * 2 - 1`` with ``bits`` the container depth (8 or 16);
  float TIFFs must already be in [0, 1] or [-1, 1] (anything else is rejected, it is ambiguous);
  TIFF MINISWHITE is inverted.
* DICOM (:class:`DicomMapping`): modality LUT (rescale slope / intercept) first, then the VOI
  window if the file has one (``WindowCenter`` / ``WindowWidth``, LINEAR or LINEAR_EXACT), else
  the full range the stored bits allow; MONOCHROME1 (high value = dark) is inverted so that bone
  is bright in every output.
* Colour (RGB, RGBA, palette, YBR) in any format, only with ``allow_rgb``: ITU-R BT.601 luma
  ``0.299 R + 0.587 G + 0.114 B`` of the channels scaled by their maximum ``2**bits - 1``.

Vetting (:func:`probe_image`, headers only; :func:`read_image` runs it first) refuses what is not
one radiograph: non-radiographic DICOM modalities, 1-bit masks, multi-frame files without
``frame``, colour without ``allow_rgb``, PNGs with a bad chunk CRC, compressed DICOM without a
decoder. Every failure a user can cause raises :class:`~medshift_fast.errors.MedShiftError`
naming the file and what to do (the cases are tabulated in docs/io_errors.md).
``read_image(..., with_source=True)`` also returns an :class:`ImageSource`, everything
``data.writers.write_image`` needs to write a result in the input's own kind and geometry.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedShiftError

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
_FIX = "check the file (re-export or delete it) or pass --skip-bad / skip_bad=True to skip it"
_SKIP = "or pass --skip-bad / skip_bad=True to skip it"
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
    """

    format: str
    depth: str
    shape: tuple[int, int]
    frames: int = 1
    color: bool = False
    modality: str | None = None


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


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file carries the DICOM Part-10 magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def image_format(path: str | os.PathLike) -> str | None:
    """The format a path is read as, by extension (DICOM also by magic); None if not an image."""
    ext = Path(path).suffix.lower()
    if ext in PNG_EXT:
        return "png"
    if ext in TIFF_EXT:
        return "tiff"
    if ext in DICOM_EXT or (ext == "" and is_dicom_file(path)):
        return "dicom"
    return None


def _fail(path, what: str) -> MedShiftError:
    """A damaged / unreadable file."""
    return MedShiftError(f"cannot read image {str(path)!r}: {what}; {_FIX}")


def _refuse(path, what: str, remedy: str) -> MedShiftError:
    """A readable file that is not what the translator takes unless told otherwise."""
    return MedShiftError(f"refusing image {str(path)!r}: {what}; {remedy}, {_SKIP}")


def _rgb_refusal(path, kind: str) -> MedShiftError:
    return _refuse(path, f"it is a colour image ({kind}), not a greyscale radiograph",
                   "pass --allow-rgb (allow_rgb=True) to convert it to grey (ITU-R BT.601 luma; "
                   "the result is written grey) or convert it to greyscale yourself")


def _one_bit_refusal(path, what: str) -> MedShiftError:
    return _refuse(path, f"{what} holds 1-bit samples (a segmentation / bitmap mask, not a "
                   "radiograph)", "remove it from the inputs")


# --- PNG -----------------------------------------------------------------------------------
def _scan_png(path, verify_crc: bool = True) -> dict:
    """Walk every chunk, verifying its CRC (libpng does, Pillow skips IDAT); no decompression.

    Without ``verify_crc`` only the small header chunks are read; the rest are seeked over.
    """
    info: dict = {"frames": 1, "ppm": None}
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIG:
            try:
                from PIL import Image

                with Image.open(path) as im:
                    kind = im.format
            except Exception:  # noqa: BLE001 - whatever it is, it is not an image
                kind = "not an image"
            raise _fail(path, f"not a PNG file (content is {kind})")
        n_idat = 0
        while True:
            off = fh.tell()
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(path, f"truncated PNG (ends at byte {off} without an IEND chunk)")
            n, ctype = struct.unpack(">I4s", head)
            if n > 2**31 - 1 or not ctype.isalpha():
                raise _fail(path, f"corrupt PNG chunk header at byte {off}")
            crc, left, data = zlib.crc32(ctype), n, b""
            keep = ctype in (b"IHDR", b"acTL", b"pHYs")
            if not (verify_crc or keep):
                fh.seek(n, os.SEEK_CUR)
                left = 0
            while left:
                block = fh.read(min(left, 1 << 20))
                if not block:
                    raise _fail(path, f"truncated PNG (chunk {ctype.decode()} at byte {off} "
                                "is cut short)")
                crc, left = zlib.crc32(block, crc), left - len(block)
                data = data + block if keep else data
            tail = fh.read(4)
            if len(tail) < 4:
                raise _fail(path, f"truncated PNG (chunk {ctype.decode()} at byte {off} has no "
                            "CRC)")
            if (verify_crc or keep) and struct.unpack(">I", tail)[0] != crc:
                raise _fail(path, f"PNG chunk {ctype.decode()} at byte {off} fails its CRC check "
                            "(the file is corrupt)")
            if off == 8 and ctype != b"IHDR" or ctype == b"IHDR" and n != 13:
                raise _fail(path, "corrupt PNG (no valid IHDR chunk first)")
            if ctype == b"IHDR":
                w, h, bits, ctyp, _, _, _ = struct.unpack(">IIBBBBB", data)
                info.update(width=w, height=h, bits=bits, ctype=ctyp)
            elif ctype == b"acTL" and n == 8:
                info["frames"] = max(1, struct.unpack(">I", data[:4])[0])
            elif ctype == b"pHYs" and n == 9 and data[8] == 1:  # unit 1 = metre
                info["ppm"] = tuple(float(v) for v in struct.unpack(">II", data[:8]))
            elif ctype == b"IDAT":
                n_idat += 1
            elif ctype == b"IEND":
                break
    if n_idat == 0:
        raise _fail(path, "PNG has no image data (no IDAT chunk)")
    return info


def _probe_png(path, verify_crc: bool) -> _Header:
    s = _scan_png(path, verify_crc)
    bits, ctype = s["bits"], s["ctype"]
    if min(s["width"], s["height"]) < 1 or ctype not in (0, 2, 3, 4, 6):
        raise _fail(path, f"invalid PNG header (size {s['width']}x{s['height']}, colour type "
                    f"{ctype})")
    color = ctype in (2, 3, 6)
    return _Header("png", "16" if bits == 16 else "8", (s["height"], s["width"]), s["frames"],
                   color, extra=s)


def _vet_png(path, hdr: _Header, allow_rgb: bool) -> None:
    bits, ctype = hdr.extra["bits"], hdr.extra["ctype"]
    if hdr.color and not allow_rgb:
        raise _rgb_refusal(path, {2: "RGB", 3: "palette", 6: "RGBA"}[ctype] + " PNG")
    if bits == 1 and ctype == 0:
        raise _one_bit_refusal(path, "this PNG")
    if bits == 16 and ctype == 4:
        raise _refuse(path, "16-bit grey+alpha PNGs cannot be decoded exactly (Pillow keeps "
                      "8 bits)", "save it without the alpha channel")
    if bits == 16 and hdr.color and hdr.frames > 1:
        raise _refuse(path, "16-bit colour animated PNGs cannot be decoded exactly",
                      "save the frame as a single PNG")


def _luma(rgb: np.ndarray, maxval: float) -> np.ndarray:
    """(H, W, >=3) colour samples -> [-1, 1] grey: BT.601 luma of channels scaled by maxval."""
    c = rgb[..., :3].astype(np.float64)
    y = (c[..., 0] * _LUMA[0] + c[..., 1] * _LUMA[1] + c[..., 2] * _LUMA[2]) / maxval
    return (y * 2.0 - 1.0).astype(np.float32)


def _int_to_unit(a: np.ndarray, bits: int) -> np.ndarray:
    return (a.astype(np.float64) * (2.0 / (2**bits - 1)) - 1.0).astype(np.float32)


def _read_png(path, hdr: _Header, frame: int | None):
    from PIL import Image

    bits16 = hdr.extra["bits"] == 16
    with Image.open(path) as im:
        if hdr.frames > 1:
            im.seek(frame)
        if hdr.color and bits16:
            # Pillow keeps only the high byte of 16-bit colour samples; decode the same data a
            # second time with the little-endian unpacker, which keeps the low byte instead.
            t = im.tile[0]
            low = list(t)
            low[3] = t[3].replace(";16B", ";16L")
            im.load()
            hi = np.asarray(im).astype(np.uint16)
            with Image.open(path) as im2:
                im2.tile = [type(t)(*low) if hasattr(t, "_fields") else tuple(low)]
                im2.load()
                a = (hi << 8) | np.asarray(im2).astype(np.uint16)
            img = _luma(a, 65535.0)
        elif hdr.color:
            img = _luma(np.asarray(im.convert("RGB")), 255.0)
        elif bits16:
            img = _int_to_unit(np.asarray(im).astype(np.uint16), 16)
        else:  # grey 2/4/8-bit (Pillow scales 2/4-bit to 0..255), grey+alpha: alpha dropped
            a = np.asarray(im.convert("L") if im.mode not in ("L", "LA") else im)
            img = _int_to_unit(a[..., 0] if a.ndim == 3 else a, 8)
    bits = 16 if bits16 else 8
    return img, dict(bits=bits, dtype=f"uint{bits}", pixels_per_metre=hdr.extra["ppm"])


# --- TIFF ----------------------------------------------------------------------------------
def _probe_tiff(path) -> _Header:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = [p for p in tf.pages if not getattr(p, "is_reduced", False)]  # no thumbnails
        if not pages:
            raise _fail(path, "TIFF has no image page")
        p = pages[0]
        photo = int(p.photometric)
        dt = np.dtype(p.dtype) if p.dtype is not None else np.dtype(np.uint8)
        extra = {"photometric": photo, "bps": int(p.bitspersample), "dtype": dt,
                 "depth3d": int(getattr(p, "imagedepth", 1) or 1), "ppm": _tiff_ppm(p)}
        depth = "float" if dt.kind == "f" else "1" if dt.kind == "b" else str(dt.itemsize * 8)
        return _Header("tiff", depth, (int(p.imagelength), int(p.imagewidth)), len(pages),
                       photo in (2, 3, 6), extra=extra)


def _tiff_ppm(page) -> tuple[float, float] | None:
    tags = page.tags
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    scale = {2: 1 / 0.0254, 3: 100.0}.get(int(unit))
    if scale is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    x, y = (tags[k].value for k in ("XResolution", "YResolution"))
    try:
        return (x[0] / x[1] * scale, y[0] / y[1] * scale)
    except (TypeError, ZeroDivisionError, IndexError):
        return None


def _vet_tiff(path, hdr: _Header, allow_rgb: bool) -> None:
    photo, dt = hdr.extra["photometric"], hdr.extra["dtype"]
    if hdr.color and not allow_rgb:
        raise _rgb_refusal(path, {2: "RGB", 3: "palette", 6: "YCbCr"}[photo] + " TIFF")
    if dt.kind == "b" or hdr.extra["bps"] == 1:
        raise _one_bit_refusal(path, "this TIFF")
    if photo not in (0, 1, 2, 3, 6):
        raise _refuse(path, f"TIFF photometric interpretation {photo} (e.g. CMYK / CIELab) is "
                      "not supported", "convert it to a greyscale TIFF")
    if hdr.color and dt.kind == "f":
        raise _refuse(path, "float colour TIFFs are not supported", "convert it to greyscale")
    if hdr.extra["depth3d"] > 1:
        raise _refuse(path, "3-D (volumetric) TIFF page", "save the slice as a 2-D TIFF")


def _read_tiff(path, hdr: _Header, frame: int | None):
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = [p for p in tf.pages if not getattr(p, "is_reduced", False)]
        page = pages[frame if hdr.frames > 1 else 0]
        a = np.asarray(page.asarray())
        colormap = page.colormap
    photo, dt, bps = hdr.extra["photometric"], hdr.extra["dtype"], hdr.extra["bps"]
    out = dict(pixels_per_metre=hdr.extra["ppm"])
    if photo == 3:  # palette: indices into a 16-bit colour map
        if colormap is None:
            raise _fail(path, "palette TIFF without a colour map")
        img = _luma(np.moveaxis(np.asarray(colormap)[:, a], 0, -1), 65535.0)
        return img, dict(out, bits=16, dtype="uint16")
    if hdr.color:
        if a.ndim != 3 or a.shape[-1] < 3:
            raise _fail(path, f"expected RGB samples, got shape {a.shape}")
        bits = min(bps, 16) if dt.kind == "u" else dt.itemsize * 8
        img = _luma(a, 2.0**bits - 1)
        return img, dict(out, bits=8 if bits <= 8 else 16, dtype="uint8" if bits <= 8 else "uint16")
    if a.ndim == 3:  # grey + extra samples (alpha): keep the grey one
        a = a[..., 0]
    if a.ndim != 2:
        raise _fail(path, f"expected a 2-D grayscale TIFF, got shape {a.shape}")
    invert = photo == 0  # MINISWHITE: 0 is white
    if dt.kind == "f":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not np.isfinite(a).all():
            img, rng = a.astype(np.float32), (0.0, 1.0)  # caught by the finiteness check
        elif lo >= 0.0 and hi <= 1.0:
            img, rng = (a.astype(np.float64) * 2 - 1).astype(np.float32), (0.0, 1.0)
        elif lo >= -1.0 and hi <= 1.0:
            img, rng = a.astype(np.float32), (-1.0, 1.0)
        else:
            raise _fail(path, f"float TIFF values in [{lo:g}, {hi:g}] (expected [0, 1] or "
                        "[-1, 1])")
        out.update(float_range=rng)
    elif dt.kind == "i":  # signed: offset to unsigned of the same width
        img = _int_to_unit(a.astype(np.int64) - np.iinfo(dt).min, dt.itemsize * 8)
    else:
        img = _int_to_unit(a, dt.itemsize * 8)
    img = -img if invert else img
    return img, dict(out, bits=dt.itemsize * 8, dtype=dt.name, invert=invert)


# --- DICOM ---------------------------------------------------------------------------------
_DECODER_HINTS = (  # transfer syntax UID prefix -> what to install
    (("1.2.840.10008.1.2.4.8",), "pyjpegls (pip install pyjpegls) or python-gdcm"),
    (("1.2.840.10008.1.2.4.9",), "pylibjpeg + pylibjpeg-openjpeg (pip install pylibjpeg "
     "pylibjpeg-openjpeg) or python-gdcm"),
    (("1.2.840.10008.1.2.4.20",), "pylibjpeg + pylibjpeg-openjpeg (pip install pylibjpeg "
     "pylibjpeg-openjpeg)"),
    (("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.6", "1.2.840.10008.1.2.4.7"),
     "pylibjpeg + pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or python-gdcm"),
    (("1.2.840.10008.1.2.5",), "pylibjpeg + pylibjpeg-rle (pip install pylibjpeg "
     "pylibjpeg-rle) or python-gdcm"),
)


def _decoder_refusal(path, ts, detail: str = "no installed decoder reads it") -> MedShiftError:
    hint = next((h for pre, h in _DECODER_HINTS if str(ts).startswith(pre)), None)
    what = f"its pixel data is compressed as {ts.name} ({ts}) and {detail}"
    if hint is None:
        return _refuse(path, what, "pydicom cannot decode this transfer syntax: convert it to "
                       "uncompressed DICOM (e.g. gdcmconv --raw or dcmdjpeg)")
    return _refuse(path, what, f"install {hint}, or convert it to uncompressed DICOM (e.g. "
                   "gdcmconv --raw)")


def _first(v) -> float:
    from pydicom.multival import MultiValue

    return float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v)


def _dicom_mapping(path, ds) -> DicomMapping:
    ba = int(ds.get("BitsAllocated", 16))
    bs = int(ds.get("BitsStored", ba) or ba)
    pr = int(ds.get("PixelRepresentation", 0) or 0)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is not None and width is not None and str(center) != "" and str(width) != "":
        c, w = _first(center), _first(width)
        if func == "LINEAR_EXACT":
            if w <= 0.0:
                raise _fail(path, f"invalid VOI window width {w:g} (LINEAR_EXACT needs > 0)")
            lo, hi, voi = c - w / 2, c + w / 2, "LINEAR_EXACT"
        else:  # LINEAR; SIGMOID is read with the linear window too (documented)
            if w < 1.0:
                raise _fail(path, f"invalid VOI window width {w:g}")
            lo, hi, voi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2, "LINEAR"
    else:
        smin, smax = (-(2 ** (bs - 1)), 2 ** (bs - 1) - 1) if pr else (0, 2**bs - 1)
        lo, hi = sorted((smin * slope + intercept, smax * slope + intercept))
        voi = "range"
    return DicomMapping(slope, intercept, lo, max(hi, lo + 1e-12), voi, photo == "MONOCHROME1",
                        ba, bs, int(ds.get("HighBit", bs - 1) or bs - 1), pr,
                        "MONOCHROME1" if photo == "MONOCHROME1" else "MONOCHROME2")


def _probe_dicom(path) -> _Header:
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=1024)  # large values (pixels) are not loaded
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if not any(k in ds for k in _PIXEL_TAGS):
        raise _fail(path, "DICOM file has no pixel data (is it a report/structured file?)")
    if "Rows" not in ds or "Columns" not in ds:
        raise _fail(path, "DICOM image without Rows / Columns")
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    color = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or not photo.startswith("MONOCHROME")
    return _Header("dicom", str(int(ds.get("BitsAllocated", 16))), (int(ds.Rows),
                   int(ds.Columns)), max(1, int(ds.get("NumberOfFrames", 1) or 1)), color,
                   str(ds.get("Modality", "") or "").strip().upper(), {"ds": ds, "photo": photo})


def _modality_ok(mod: str, allow: bool | str | Collection[str]) -> bool:
    if allow is True or mod in RADIOGRAPHIC_MODALITIES:
        return True
    if not allow:
        return False
    codes = allow.split(",") if isinstance(allow, str) else allow
    return mod in {str(c).strip().upper() for c in codes}


def _vet_dicom(path, hdr: _Header, allow_modality, allow_rgb: bool) -> None:
    from pydicom.uid import UID

    ds, photo, mod = hdr.extra["ds"], hdr.extra["photo"], hdr.modality
    if "PixelData" not in ds:
        raise _refuse(path, "it holds float pixel data (a parametric map, not a radiograph)",
                      "remove it from the inputs")
    if int(ds.get("BitsAllocated", 16)) == 1:
        raise _one_bit_refusal(path, f"this DICOM (Modality {mod or 'missing'})")
    if not _modality_ok(mod, allow_modality):
        name = _MODALITY_NAMES.get(mod, "not a projection radiograph")
        raise _refuse(path, f"DICOM Modality {mod} ({name}) is not a radiograph (accepted: "
                      f"{', '.join(sorted(RADIOGRAPHIC_MODALITIES - {''}))} or none)",
                      f"pass --allow-modality {mod} (allow_modality={{{mod!r}}}) to translate it "
                      "anyway")
    if hdr.color and not allow_rgb:
        raise _rgb_refusal(path, f"DICOM {photo}")
    if photo not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR") and \
            not photo.startswith("YBR"):
        raise _refuse(path, f"DICOM PhotometricInterpretation {photo} is not supported",
                      "convert it to MONOCHROME2")
    if not hdr.color:
        _dicom_mapping(path, ds)  # vets the VOI window
    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if ts is None:
        return
    ts = UID(str(ts))
    if ts.is_transfer_syntax and not ts.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        raise _decoder_refusal(path, ts, "pydicom has no decoder for it") from None
    if not dec.is_available:
        raise _decoder_refusal(path, ts)
    if tuple(dec.available_plugins) == ("pillow",) and str(ts) in (
            "1.2.840.10008.1.2.4.51",) and int(ds.get("BitsStored", 8)) > 8:
        raise _decoder_refusal(path, ts, "the only installed decoder (Pillow) reads 8-bit JPEG "
                               "only")


def _read_dicom(path, hdr: _Header, frame: int | None):
    import pydicom
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    ts = ds.file_meta.get("TransferSyntaxUID")
    if hdr.frames > 1:
        ds.pixel_array_options(index=frame)
    try:
        a = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        if ts is not None and UID(str(ts)).is_transfer_syntax and UID(str(ts)).is_compressed:
            msg = str(exc).splitlines()[0]
            raise _decoder_refusal(path, UID(str(ts)), f"decoding failed ({msg})") from None
        raise _fail(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if hdr.frames == 1 and a.ndim == (4 if hdr.color else 3):
        a = a[0]  # NumberOfFrames 1 stored with a frame axis
    if hdr.color:
        if hdr.extra["photo"] == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            rgb, bits = apply_color_lut(a, ds), int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            rgb, bits = a, int(ds.get("BitsStored", 8))
        if rgb.ndim != 3:
            raise _fail(path, f"expected colour samples, got pixel array shape {rgb.shape}")
        img = _luma(rgb, 2.0**bits - 1)
        ba = 8 if bits <= 8 else 16 if bits <= 16 else 32
        mapping = DicomMapping(1.0, 0.0, 0.0, 2.0**bits - 1, "range", False, ba, bits, bits - 1,
                               0, "MONOCHROME2")
    else:
        if a.ndim != 2:
            raise _fail(path, f"expected a grayscale DICOM image, got pixel array shape {a.shape}")
        mapping = _dicom_mapping(path, ds)
        img = mapping.to_unit(a)
    del ds.PixelData  # the header is what the writer needs
    ppm = None
    for sp in (ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")):
        if sp is not None and len(sp) == 2 and min(float(v) for v in sp) > 0:
            ppm = (1000.0 / float(sp[1]), 1000.0 / float(sp[0]))  # (row, col) spacing in mm
            break
    dtype = f"{'' if mapping.pixel_representation else 'u'}int{mapping.bits_allocated}"
    return img, dict(bits=mapping.bits_allocated, dtype=dtype, invert=mapping.invert,
                     pixels_per_metre=ppm, transfer_syntax=None if ts is None else str(ts),
                     mapping=mapping, dataset=ds)


# --- public --------------------------------------------------------------------------------
def _vet(path, frame, allow_modality, allow_rgb, verify_crc=True) -> _Header:
    fmt = image_format(path)
    if fmt is None:
        raise _fail(path, "unsupported extension (use .png, .tif/.tiff or .dcm)")
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "file is empty")
    try:
        if fmt == "png":
            hdr = _probe_png(path, verify_crc)
            _vet_png(path, hdr, allow_rgb)
        elif fmt == "tiff":
            hdr = _probe_tiff(path)
            _vet_tiff(path, hdr, allow_rgb)
        else:
            hdr = _probe_dicom(path)
            _vet_dicom(path, hdr, allow_modality, allow_rgb)
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise _fail(path, f"{type(exc).__name__}: {exc}") from None
    kind = {"png": "an animated PNG", "tiff": "a multi-page TIFF",
            "dicom": "a multi-frame DICOM"}[fmt]
    if hdr.frames > 1 and frame is None:
        raise _refuse(path, f"it is {kind} with {hdr.frames} frames", "pass --frame K "
                      f"(frame=K, 0-based, 0..{hdr.frames - 1}) to translate one of them")
    if hdr.frames > 1 and not 0 <= int(frame) < hdr.frames:
        raise _refuse(path, f"frame {frame} asked for, but it is {kind} with {hdr.frames} "
                      "frames", f"pass --frame K with K in 0..{hdr.frames - 1}")
    return hdr


def probe_image(path: str | os.PathLike, *, frame: int | None = None,
                allow_modality: bool | str | Collection[str] = False,
                allow_rgb: bool = False, verify_crc: bool = True) -> ImageInfo:
    """Read only the header of an image file (fast) and vet it as :func:`read_image` would.

    A PNG is read through once to verify every chunk CRC, without decompressing it; TIFF and
    DICOM pixel data are not read.

    Args:
        path: a .png, .tif/.tiff or .dcm file (or an extensionless DICOM).
        frame, allow_modality, allow_rgb: as for :func:`read_image`.
        verify_crc: PNG: verify every chunk's CRC (reads the whole file, fast, no
            decompression); False reads only the header chunks (truncation is still caught).

    Returns:
        The format, depth, shape, frame count, colour flag and modality.

    Raises:
        MedShiftError: the file is not a readable image of a supported kind, or is refused
            (see :func:`read_image`); the message names the file and what to do.
    """
    h = _vet(path, frame, allow_modality, allow_rgb, verify_crc)
    return ImageInfo(h.format, h.depth, h.shape, h.frames, h.color, h.modality)


def read_image(path: str | os.PathLike, *, frame: int | None = None,
               allow_modality: bool | str | Collection[str] = False, allow_rgb: bool = False,
               with_source: bool = False, verify_crc: bool = True):
    """Decode one X-ray image to a float32 array in [-1, 1] (bone bright).

    Args:
        path: a .png (8/16-bit), .tif/.tiff or .dcm file (or an extensionless DICOM).
        frame: 0-based frame to read from a multi-frame DICOM, multi-page TIFF or animated PNG
            (required for those; ignored for single-frame files).
        allow_modality: DICOM modalities beyond the radiographic ones (CR, DX, RF, XA, MG, IO,
            PX, RG, DF, CF, VF, OT or none): True for any, or a collection of codes ("CT", ...)
            or a comma-separated string.
        allow_rgb: convert colour inputs (RGB, RGBA, palette, YBR) to grey with BT.601 luma
            instead of refusing them.
        with_source: also return the :class:`ImageSource` needed to write the result back.
        verify_crc: PNG: verify every chunk CRC first (as :func:`probe_image`); False skips
            it, e.g. for files already vetted by a probe.

    Returns:
        float32 array of shape (H, W), values in [-1, 1]; with ``with_source`` the tuple
        ``(img, ImageSource)``.

    Raises:
        MedShiftError: the file is missing, truncated (PNG: any bad chunk CRC), not an image,
            has no pixel data, decodes to NaN/Inf, or is refused: a non-radiographic modality,
            1-bit mask, multi-frame without ``frame``, colour without ``allow_rgb``, compressed
            DICOM without a decoder. The message names the file and what to do.
    """
    hdr = _vet(path, frame, allow_modality, allow_rgb, verify_crc)
    k = int(frame) if hdr.frames > 1 else None
    try:
        img, meta = {"png": _read_png, "tiff": _read_tiff, "dicom": _read_dicom}[hdr.format](
            path, hdr, k)
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as anything
        raise _fail(path, f"corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if img.ndim != 2 or min(img.shape) < 1:
        raise _fail(path, f"decoded to shape {img.shape}, expected a 2-D image")
    if not np.isfinite(img).all():
        raise _fail(path, "decoded pixel values contain NaN or Inf")
    img = np.ascontiguousarray(img, dtype=np.float32)
    if not with_source:
        return img
    return img, ImageSource(Path(path), hdr.format, (int(img.shape[0]), int(img.shape[1])),
                            color=hdr.color, frame=k, n_frames=hdr.frames,
                            modality=hdr.modality, **meta)


def to_uint16(img) -> np.ndarray:
    """Quantise an image in [-1, 1] to uint16 (round half to even, values clipped).

    Args:
        img: array-like or tensor, shape (H, W).

    Returns:
        uint16 array of shape (H, W): -1 -> 0, +1 -> 65535.
    """
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise MedShiftError(f"to_uint16 expects a 2-D image (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MedShiftError("to_uint16: image contains NaN or Inf; check the model output")
    return np.rint((np.clip(a, -1.0, 1.0) + 1.0) * 32767.5).astype(np.uint16)


def write_png16(path: str | os.PathLike, img, compress_level: int = 6) -> None:
    """Write an image in [-1, 1] as a 16-bit grayscale PNG, atomically (temp file + rename).

    Replaces an existing file (training samples, the simulator); translated outputs go through
    ``data.writers.write_image``, which refuses to.

    Args:
        path: destination .png path (parent folders are created).
        img: array-like or tensor of shape (H, W) or (1, H, W), values in [-1, 1].
        compress_level: zlib level 0-9 (1 is ~2x faster than 6 and only a few % larger on
            noisy X-rays).
    """
    from PIL import Image

    from ..fileio import atomic_write

    q = to_uint16(img)
    # mode I;16 -> 16-bit grayscale PNG
    atomic_write(path, lambda tmp: Image.fromarray(q).save(tmp, format="PNG",
                                                           compress_level=compress_level))
