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
Discovery (:func:`find_images`) finds image files by extension or, for any other name, by
content (PNG / TIFF signature, ``DICM`` at byte 128) and lists what it leaves out, with why.
``read_image(..., with_source=True)`` also returns an :class:`ImageSource`, everything
``data.writers.write_image`` needs to write a result in the input's own kind and geometry.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ..errors import MedShiftError, option
from ._dicom import _probe_dicom, _read_dicom, _vet_dicom
from ._png import _probe_png, _read_png, _vet_png
from ._records import (
    DICOM_EXT,
    IMAGE_EXT,
    PNG_EXT,
    RADIOGRAPHIC_MODALITIES,
    TIFF_EXT,
    DicomMapping,
    ImageInfo,
    ImageSource,
    _fail,
    _Header,
    _refuse,
    given,
)
from ._tiff import _probe_tiff, _read_tiff, _vet_tiff

__all__ = ["DICOM_EXT", "IMAGE_EXT", "PNG_EXT", "RADIOGRAPHIC_MODALITIES", "TIFF_EXT",
           "DicomMapping", "ImageInfo", "ImageSource", "find_images", "image_format",
           "is_dicom_file", "probe_image", "read_image", "sniff_format", "to_uint16",
           "write_png16"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file carries the DICOM Part-10 magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format a file's content declares: "png" (PNG signature), "tiff" (``II*\\0``,
    ``MM\\0*`` or BigTIFF), "dicom" (``DICM`` at byte 128), or None (none of these).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def _by_extension(path) -> str | None:
    ext = Path(path).suffix.lower()
    if ext in PNG_EXT:
        return "png"
    if ext in TIFF_EXT:
        return "tiff"
    if ext in DICOM_EXT:
        return "dicom"
    return None


def image_format(path: str | os.PathLike) -> str | None:
    """The format a path is read as: by its extension (.png, .tif/.tiff, .dcm/.dicom), else by
    its content (:func:`sniff_format`: extensionless PACS exports such as ``IM0001``, or
    names like ``1.2.840.5.3``); None if it is neither, or cannot be read."""
    fmt = _by_extension(path)
    if fmt is not None:
        return fmt
    try:
        return sniff_format(path)
    except OSError:
        return None


def _skip_reason(path: Path) -> str | None:
    """None if ``path`` is an image file, else why it is left out."""
    if _by_extension(path) is not None:
        return None
    try:
        if sniff_format(path) is not None:
            return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    ext = path.suffix.lower()
    return (f"not an image ({ext or 'no extension'}; no PNG, TIFF or DICOM signature)")


def find_images(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image file under ``folder``, found by extension or by content.

    A file counts as an image when its extension is .png, .tif/.tiff or .dcm/.dicom, or, for
    any other name (none, ``.1``, ``.IMA``, ...), when its first bytes carry a PNG or TIFF
    signature or the DICOM marker ``DICM`` at byte 128 (:func:`sniff_format`). Hidden files
    and folders (names starting with ".") are passed over silently; every other file that is
    not an image is returned in ``skipped`` with the reason, for the caller to report.

    Args:
        folder: a folder (searched recursively, symlinked folders not followed) or one file.

    Returns:
        ``(found, skipped)``: image paths in a stable order (depth first; in each folder its
        files, sorted, before its sub-folders, sorted), and ``(path, reason)`` of the files
        left out, in the same order.

    Raises:
        MedShiftError: ``folder`` does not exist.
    """
    root = Path(folder)
    if root.is_file():
        why = _skip_reason(root)
        return ([root], []) if why is None else ([], [(root, why)])
    if not root.is_dir():
        raise MedShiftError(f"{str(root)!r} does not exist; pass an existing folder or file")
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if not p.is_file():  # a broken link, a socket, ...
                skipped.append((p, "not a regular file"))
                continue
            why = _skip_reason(p)
            if why is None:
                found.append(p)
            else:
                skipped.append((p, why))
    return found, skipped


# --- public --------------------------------------------------------------------------------
def _vet(path, frame, allow_modality, allow_rgb, verify_crc=True) -> _Header:
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    fmt = image_format(path)
    if fmt is None:
        raise _fail(path, "unsupported: not a PNG, TIFF or DICOM file by extension or content "
                    "(use .png, .tif/.tiff or .dcm)")
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
        o = option("frame", "K", "K")
        raise _refuse(path, f"it is {kind} with {hdr.frames} frames",
                      f"pass {o} (0-based, 0..{hdr.frames - 1}) to translate one of them" if o
                      else "save the frame you want as a file of its own")
    if hdr.frames > 1 and not 0 <= int(frame) < hdr.frames:
        raise _refuse(path, f"frame {frame} asked for, but it is {kind} with {hdr.frames} "
                      "frames", f"pass {given('frame', 'K')} with K in 0..{hdr.frames - 1}")
    return hdr


def probe_image(path: str | os.PathLike, *, frame: int | None = None,
                allow_modality: bool | str | Collection[str] = False,
                allow_rgb: bool = False, verify_crc: bool = True) -> ImageInfo:
    """Read only the header of an image file (fast) and vet it as :func:`read_image` would.

    A PNG is read through once to verify every chunk CRC, without decompressing it; TIFF and
    DICOM pixel data are not read.

    Args:
        path: a .png, .tif/.tiff or .dcm file (or a file of any other name whose content is
            one: :func:`image_format`).
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
    return ImageInfo(h.format, h.depth, h.shape, h.frames, h.color, h.modality,
                     h.extra.get("spacing_mm"), h.extra.get("significant_bits"))


def read_image(path: str | os.PathLike, *, frame: int | None = None,
               allow_modality: bool | str | Collection[str] = False, allow_rgb: bool = False,
               with_source: bool = False, verify_crc: bool = True,
               input_bits: int | None = None):
    """Decode one X-ray image to a float32 array in [-1, 1] (bone bright).

    Args:
        path: a .png (8/16-bit), .tif/.tiff or .dcm file (or a file of any other name whose
            content is one: :func:`image_format`).
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
        input_bits: treat grey integer samples as this many significant bits (0 .. 2**b - 1
            mapped to the full range), overriding what the file declares (PNG sBIT, TIFF
            BitsPerSample / SMaxSampleValue, DICOM BitsStored for files without a VOI window);
            values above 2**b - 1 are refused.

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
    hdr.extra["input_bits"] = None if input_bits is None else int(input_bits)
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

