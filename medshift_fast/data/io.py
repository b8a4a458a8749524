"""Image I/O: PNG (8/16-bit), TIFF and DICOM to float32 in [-1, 1], and 16-bit PNG out.

Intensity convention: -1 is the darkest representable value (air on a radiograph as displayed),
+1 the brightest (bone). Each format is mapped by what the file itself declares:

* PNG / TIFF integers: ``x / (2**bits - 1) * 2 - 1`` with ``bits`` the container depth (8 or 16);
  float TIFFs must already be in [0, 1] or [-1, 1] (anything else is rejected, it is ambiguous).
* DICOM: modality LUT (rescale slope / intercept) first, then the VOI window if the file has one
  (linear ``WindowCenter`` / ``WindowWidth``), else the full range the stored bits allow;
  MONOCHROME1 (high value = dark) is inverted so that bone is bright in every output.

Every failure a user can cause raises :class:`~medshift_fast.errors.MedShiftError` naming the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MedShiftError

PNG_EXT = (".png",)
TIFF_EXT = (".tif", ".tiff")
DICOM_EXT = (".dcm", ".dicom")
IMAGE_EXT = PNG_EXT + TIFF_EXT + DICOM_EXT

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FIX = "check the file (re-export or delete it) or pass --skip-bad / skip_bad=True to skip it"


@dataclass(frozen=True)
class ImageInfo:
    """Cheap header facts used to validate a dataset without decoding pixels.

    Attributes:
        format: "png", "tiff" or "dicom".
        depth: container bit depth ("8", "16", "32", "float") or for DICOM the BitsAllocated.
        shape: (H, W) of the image.
    """

    format: str
    depth: str
    shape: tuple[int, int]


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
    return MedShiftError(f"cannot read image {str(path)!r}: {what}; {_FIX}")


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Read only the header of an image file (fast) and return its format, depth and shape.

    Raises:
        MedShiftError: the file is not a readable image of a supported kind.
    """
    fmt = image_format(path)
    if fmt is None:
        raise _fail(path, "unsupported extension (use .png, .tif/.tiff or .dcm)")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise _fail(path, "file is missing or empty")
    try:
        if fmt == "png":
            from PIL import Image

            with Image.open(path) as im:
                if im.format != "PNG":
                    raise _fail(path, f"not a PNG file (content is {im.format})")
                depth = "16" if im.mode.startswith("I") else "32" if im.mode == "F" else "8"
                return ImageInfo("png", depth, (im.height, im.width))
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                dt = np.dtype(page.dtype)
                depth = "float" if dt.kind == "f" else str(dt.itemsize * 8)
                shp = page.shape
                return ImageInfo("tiff", depth, (int(shp[0]), int(shp[1])))
        import pydicom

        ds = pydicom.dcmread(path, defer_size=1024)  # large values (pixels) are not loaded
        if not any(k in ds for k in _PIXEL_TAGS):
            raise _fail(path, "DICOM file has no pixel data (is it a report/structured file?)")
        depth = str(int(ds.get("BitsAllocated", 16)))
        return ImageInfo("dicom", depth, (int(ds.Rows), int(ds.Columns)))
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise _fail(path, f"{type(exc).__name__}: {exc}") from None


def _int_to_unit(a: np.ndarray, bits: int) -> np.ndarray:
    return a.astype(np.float32) * np.float32(2.0 / (2**bits - 1)) - np.float32(1.0)


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise _fail(path, f"not a PNG file (content is {im.format})")
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im)
            if mode == "I" and (a.min() < 0 or a.max() > 65535):
                raise _fail(path, "32-bit integer PNG outside the 16-bit range")
            return _int_to_unit(a.astype(np.uint16), 16)
        if mode in ("1", "L", "P", "LA", "PA"):
            return _int_to_unit(np.asarray(im.convert("L")), 8)
        if mode in ("RGB", "RGBA"):
            return _int_to_unit(np.asarray(im.convert("L")), 8)
        raise _fail(path, f"unsupported PNG mode {mode!r}")


def _read_tiff(path) -> np.ndarray:
    import tifffile

    a = np.asarray(tifffile.imread(path, key=0))
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # RGB(A): luminance
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        a = a.astype(np.float32) / (255.0 if a.max() <= 255 else 65535.0)
        return a * 2 - 1
    if a.ndim != 2:
        raise _fail(path, f"expected a 2-D grayscale TIFF, got shape {a.shape}")
    if a.dtype.kind == "f":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo >= 0.0 and hi <= 1.0:
            return a.astype(np.float32) * 2 - 1
        if lo >= -1.0 and hi <= 1.0:
            return a.astype(np.float32)
        if not np.isfinite(a).all():
            return a.astype(np.float32)  # caught by the finiteness check
        raise _fail(path, f"float TIFF values in [{lo:g}, {hi:g}] (expected [0, 1] or [-1, 1])")
    if a.dtype.kind == "b":
        return a.astype(np.float32) * 2 - 1
    if a.dtype.kind == "i":  # signed: offset to unsigned of the same width
        bits = a.dtype.itemsize * 8
        return _int_to_unit(a.astype(np.int64) - np.iinfo(a.dtype).min, bits)
    return _int_to_unit(a, a.dtype.itemsize * 8)


def _read_dicom(path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if not any(k in ds for k in _PIXEL_TAGS):
        raise _fail(path, "DICOM file has no pixel data (is it a report/structured file?)")
    try:
        a = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if a.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        a = a[0]  # multi-frame: first frame
    if a.ndim != 2:
        raise _fail(path, f"expected a grayscale DICOM image, got pixel array shape {a.shape}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    x = a.astype(np.float64) * slope + intercept
    bits = int(ds.get("BitsStored", a.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if w < 1.0:
            raise _fail(path, f"invalid VOI window width {w:g}")
        lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2  # DICOM PS3.3 C.11.2.1.2 linear
    else:
        smin = -(2 ** (bits - 1)) if signed else 0
        smax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        ends = sorted((smin * slope + intercept, smax * slope + intercept))
        lo, hi = ends
    y = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 2.0 - 1.0
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        y = -y
    return y.astype(np.float32)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one X-ray image to a float32 array in [-1, 1].

    Args:
        path: a .png (8/16-bit), .tif/.tiff or .dcm file (or an extensionless DICOM).

    Returns:
        float32 array of shape (H, W), values in [-1, 1], bone bright.

    Raises:
        MedShiftError: the file is missing, truncated, not an image, has no pixel data, or decodes
            to NaN/Inf; the message names the file and what to do.
    """
    fmt = image_format(path)
    if fmt is None:
        raise _fail(path, "unsupported extension (use .png, .tif/.tiff or .dcm)")
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "file is empty")
    try:
        if fmt == "png":
            img = _read_png(path)
        elif fmt == "tiff":
            img = _read_tiff(path)
        else:
            img = _read_dicom(path)
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as anything
        raise _fail(path, f"corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if img.ndim != 2 or min(img.shape) < 1:
        raise _fail(path, f"decoded to shape {img.shape}, expected a 2-D image")
    if not np.isfinite(img).all():
        raise _fail(path, "decoded pixel values contain NaN or Inf")
    return np.ascontiguousarray(img, dtype=np.float32)


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

    Args:
        path: destination .png path (parent folders are created).
        img: array-like or tensor of shape (H, W) or (1, H, W), values in [-1, 1].
        compress_level: zlib level 0-9 (1 is ~2x faster than 6 and only a few % larger on
            noisy X-rays).
    """
    from PIL import Image

    q = to_uint16(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mode I;16 -> 16-bit grayscale PNG
            Image.fromarray(q).save(fh, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
