"""DICOM: header, modality and photometric vetting, the exact intensity mapping, decoding."""

from __future__ import annotations

from collections.abc import Collection

from ..errors import MedShiftError, option
from ._records import (
    _MODALITY_NAMES,
    _PIXEL_TAGS,
    RADIOGRAPHIC_MODALITIES,
    DicomMapping,
    _fail,
    _Header,
    _luma,
    _one_bit_refusal,
    _refuse,
    _rgb_refusal,
    given,
)

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


def dicom_spacing_mm(ds) -> float | None:
    """Mean pixel spacing (mm) of PixelSpacing, else ImagerPixelSpacing; None if absent / 0."""
    for sp in (ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")):
        try:
            v = [float(x) for x in sp] if sp is not None else []
        except (TypeError, ValueError):
            continue
        if len(v) == 2 and min(v) > 0:
            return float((v[0] * v[1]) ** 0.5)
    return None


def _dicom_mapping(path, ds, input_bits: int | None = None) -> DicomMapping:
    ba = int(ds.get("BitsAllocated", 16))
    bs = int(ds.get("BitsStored", ba) or ba)
    if input_bits is not None:
        if not 1 <= int(input_bits) <= ba:
            raise _refuse(path, f"{given('input_bits', input_bits)} does not fit its {ba}-bit "
                          "samples", f"pass {given('input_bits', 'B')} with B between 1 and {ba}")
        bs = int(input_bits)
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
    ba = int(ds.get("BitsAllocated", 16))
    bs = int(ds.get("BitsStored", ba) or ba)
    return _Header("dicom", str(ba), (int(ds.Rows),
                   int(ds.Columns)), max(1, int(ds.get("NumberOfFrames", 1) or 1)), color,
                   str(ds.get("Modality", "") or "").strip().upper(),
                   {"ds": ds, "photo": photo, "spacing_mm": dicom_spacing_mm(ds),
                    "significant_bits": bs if bs < ba else None})


def _modality_ok(mod: str, allow: bool | str | Collection[str]) -> bool:
    if allow is True or mod in RADIOGRAPHIC_MODALITIES:
        return True
    if not allow:
        return False
    codes = allow.split(",") if isinstance(allow, str) else allow
    return mod in {str(c).strip().upper() for c in codes}


def _modality_fix(mod: str) -> str:
    o = option("allow_modality", mod, f"{{{mod!r}}}")
    return (f"pass {o} to translate it anyway" if o else
            "remove it from the inputs (only projection X-ray modalities are taken here)")


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
                      _modality_fix(mod))
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
        mapping = _dicom_mapping(path, ds, hdr.extra.get("input_bits"))
        if hdr.extra.get("input_bits") is not None and mapping.voi == "range":
            top = int(a.max()) if a.size else 0
            smin, smax = mapping.stored_range
            if top > smax:
                raise _refuse(path, f"it holds stored values up to {top}, more than "
                              f"{given('input_bits', mapping.bits_stored)} allows ({smax})",
                              "pass a larger number of bits or leave the option out")
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


