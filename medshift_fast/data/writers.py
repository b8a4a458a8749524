"""Writing translated images in the input's own kind: PNG, TIFF or DICOM, never overwriting.

``write_image(path, img, source)`` takes a result in [-1, 1] at the source's geometry and the
:class:`~medshift_fast.data.io.ImageSource` that ``read_image(..., with_source=True)`` returned,
and writes it so that ``read_image`` of the output gives back ``img`` to within one quantisation
step:

* PNG / TIFF: the source's bit depth (8 / 16; signed TIFF stays signed, MINISWHITE stays
  MINISWHITE), 16-bit when there is no source or it was DICOM / float TIFF; resolution (pHYs /
  X/YResolution, or the DICOM pixel spacing) kept; quantised ``rint((x + 1) / 2 * (2**b - 1))``.
* DICOM from a DICOM: the source's header with a new SOP Instance UID and a series identity of
  its own (:func:`derived_series`: one derived series per source series and run, SeriesNumber
  ``SERIES_OFFSET`` + the source's, SeriesDate / SeriesTime of the translation), ImageType
  DERIVED\\SECONDARY, a DerivationCodeSequence of our own (:data:`DERIVATION_CODE`, replacing
  the source's), a DerivationDescription (the run's name and hash -- never a local path --, tau,
  domains, version) and a SourceImageSequence; pixels re-encoded by inverting the reader's exact
  intensity map (:class:`~medshift_fast.data.io.DicomMapping`), uncompressed (Explicit VR Little
  Endian). Without a DICOM source: a new Secondary Capture image (SeriesNumber
  ``SERIES_OFFSET``).

Colour inputs (read with ``allow_rgb``) are written grey. Every file goes through
``fileio.atomic_write``: a crash never leaves a partial file, and ``exclusive=True`` (default)
refuses an existing destination with a MedShiftError.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path

import numpy as np

from ..errors import MedShiftError
from ..fileio import atomic_write
from .io import DicomMapping, ImageSource

__all__ = ["DERIVATION_CODE", "FORMATS", "SERIES_OFFSET", "derived_series", "new_series_uid",
           "output_suffix", "write_image"]

#: Output formats: "same" = the source's own kind (16-bit PNG without a source).
FORMATS = ("same", "png", "tiff", "dicom")
_ALIASES = {"tif": "tiff", "dcm": "dicom"}
_ST_MAX, _LO_MAX = 1024, 64  # DICOM VR length limits (DerivationDescription, SeriesDescription)
#: derived SeriesNumber = SERIES_OFFSET + the source's SeriesNumber (SERIES_OFFSET when it has
#: none, and for a Secondary Capture of a PNG / TIFF): it sorts after its source in a viewer
#: and reads as "derived from series N"
SERIES_OFFSET = 1000
_IS_MAX = 2**31 - 1
#: the DerivationCodeSequence item of every derived image: a private coding scheme ("99" prefix,
#: PS3.16 8.2), declared in CodingSchemeIdentificationSequence (no standard code in CID 7203
#: "Image Derivation" names a generative translation between imaging domains)
DERIVATION_CODE = ("TRANSLATION", "99MEDSHIFT",
                   "Generative domain translation of an X-ray image (medshift_fast)")
_LOSSY_TS = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
             "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203"}
_COLOUR_TAGS = (
    "PlanarConfiguration", "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "AlphaPaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "AlphaPaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "SegmentedAlphaPaletteColorLookupTableData", "PaletteColorLookupTableUID", "ICCProfile",
    "ColorSpace")
_CINE_TAGS = (
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "StartTrim",
    "StopTrim", "RecommendedDisplayFrameRate", "CineRate", "FrameDelay", "ActualFrameDuration",
    "PreferredPlaybackSequencing", "FrameLabelVector", "FramePrimaryAngleVector",
    "FrameSecondaryAngleVector", "SliceLocationVector", "DisplayWindowLabelVector")
# values computed from the old pixels, or describing the old encoding: wrong after re-encoding
_STALE_TAGS = (
    "IconImageSequence", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PixelDataProviderURL", "FloatPixelData", "DoubleFloatPixelData")


def new_series_uid() -> str:
    """A fresh DICOM UID for a run of the translator (the seed of its derived series)."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


def derived_series(series_uid: str, source: ImageSource | None) -> tuple[str, int]:
    """(SeriesInstanceUID, SeriesNumber) of the derived series an output of ``source`` joins.

    One derived series per source series and run: its UID is a hash of the run's
    ``series_uid`` and the source's SeriesInstanceUID (the same for every image of that source
    series, another for another series or run); its number is ``SERIES_OFFSET`` + the
    source's SeriesNumber. A non-DICOM source: the run's ``series_uid`` and ``SERIES_OFFSET``.
    """
    from pydicom.uid import generate_uid

    ds = getattr(source, "dataset", None) if source is not None else None
    if ds is None or source.format != "dicom":
        return series_uid, SERIES_OFFSET
    src_uid = str(ds.get("SeriesInstanceUID", "") or "")
    uid = str(generate_uid(entropy_srcs=[series_uid, src_uid])) if src_uid else series_uid
    try:
        n = int(str(ds.get("SeriesNumber", "") or "0").strip() or 0)
    except ValueError:
        n = 0
    return uid, int(min(max(SERIES_OFFSET + n, -_IS_MAX), _IS_MAX))


def _derivation_code(ds) -> None:
    """Replace the source's DerivationCodeSequence with ours; declare our coding scheme."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    value, scheme, meaning = DERIVATION_CODE
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    ds.DerivationCodeSequence = Sequence([code])
    ident = Dataset()
    ident.CodingSchemeDesignator = scheme
    ident.CodingSchemeName = "medshift_fast derivation codes"
    ident.CodingSchemeResponsibleOrganization = "medshift_fast"
    kept = [it for it in ds.get("CodingSchemeIdentificationSequence", []) or []
            if str(it.get("CodingSchemeDesignator", "")) != scheme]
    ds.CodingSchemeIdentificationSequence = Sequence([*kept, ident])


def _resolve(fmt: str, source: ImageSource | None) -> str:
    f = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if f not in FORMATS:
        raise MedShiftError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    if f == "same":
        return source.format if source is not None else "png"
    return f


def output_suffix(fmt: str = "same", source: ImageSource | None = None) -> str:
    """The file suffix of an output in ``fmt`` for ``source``: the source's own suffix for
    "same" when it is a known one (".tif" stays ".tif"), else ".png" / ".tiff" / ".dcm".

    Raises:
        MedShiftError: ``fmt`` is not one of :data:`FORMATS` (or "tif" / "dcm").
    """
    f = _resolve(fmt, source)
    if source is not None and source.format == f:
        ext = source.path.suffix.lower()
        if ext in {"png": (".png",), "tiff": (".tif", ".tiff"), "dicom": (".dcm", ".dicom")}[f]:
            return ext
    return {"png": ".png", "tiff": ".tiff", "dicom": ".dcm"}[f]


def _check_img(img, source: ImageSource | None, path) -> np.ndarray:
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or min(a.shape) < 1:
        raise MedShiftError(f"cannot write {str(path)!r}: expected a 2-D image (H, W), got shape "
                            f"{a.shape}")
    if not np.isfinite(a).all():
        raise MedShiftError(f"cannot write {str(path)!r}: the image contains NaN or Inf; check "
                            "the model output")
    if source is not None and tuple(a.shape) != tuple(source.shape):
        raise MedShiftError(f"cannot write {str(path)!r}: image shape {a.shape} differs from the "
                            f"source {str(source.path)!r} geometry {source.shape}; map it back to "
                            "the source geometry first")
    return a


def _quantise(a: np.ndarray, bits: int, maxval: float | None = None) -> np.ndarray:
    """[-1, 1] -> unsigned ``bits``-bit integers 0..``maxval`` (default ``2**bits - 1``), as
    ``data.io.to_uint16`` for 16 bits."""
    m = float(2.0**bits - 1 if maxval is None else maxval)
    return np.rint((np.clip(a, -1.0, 1.0) + 1.0) * (m / 2)).astype(f"<u{bits // 8}")


def _sample_max(source: ImageSource | None, bits: int) -> float | None:
    """The sample value +1 maps to: the source's significant maximum when it is written back
    at the source's own depth (12-bit data in a 16-bit PNG / TIFF stays 12-bit), else None."""
    if source is None or source.format == "dicom" or getattr(source, "sample_max", None) is None:
        return None
    return float(source.sample_max) if source.bits == bits else None


def _depth(source: ImageSource | None) -> int:
    """Integer depth of a PNG / TIFF output: the source's, or 16."""
    if source is None or source.format == "dicom" or source.dtype.startswith("float"):
        return 16
    return source.bits if source.bits in (8, 16) else 16


def _description(derivation: dict | None, notes: list[str]) -> str:
    from .. import __version__

    d = dict(derivation or {})
    parts = [f"medshift_fast {d.pop('version', __version__)} translation"]
    if "source" in d or "target" in d:
        parts[0] += f" {d.pop('source', '?')} -> {d.pop('target', '?')}"
    for k in ("model", "tau"):
        if k in d:
            parts.append(f"{k} {d.pop(k)}")
    parts += [f"{k} {v}" for k, v in d.items()] + notes
    return "; ".join(parts)


def _ascii(text: str, limit: int) -> str:
    """Plain ASCII (the default DICOM character set), cut to a VR's length limit."""
    return text.encode("ascii", "replace").decode("ascii")[:limit]


def _ppm(source: ImageSource | None) -> tuple[float, float] | None:
    return None if source is None else source.pixels_per_metre


# --- PNG / TIFF ----------------------------------------------------------------------------
def _write_png(path, a, source, text: str, exclusive: bool) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    bits = _depth(source)
    q = _quantise(a, bits, _sample_max(source, bits))
    info = PngInfo()
    sbit = getattr(source, "sbit", None) if source is not None and source.format == "png" else None
    if sbit is not None and source.bits == bits:
        info.add(b"sBIT", bytes([int(sbit)]))  # the declared significant bits, kept
    info.add_text("Software", "medshift_fast")
    info.add_text("Description", text)
    kw: dict = {}
    ppm = _ppm(source)
    if ppm is not None:  # Pillow writes pHYs in pixels per metre, rounded: exact for PNG sources
        kw["dpi"] = (ppm[0] * 0.0254, ppm[1] * 0.0254)
    im = Image.fromarray(q if q.dtype == np.uint8 else q.astype(np.uint16))
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG", pnginfo=info, **kw),
                        exclusive)


def _write_tiff(path, a, source, text: str, exclusive: bool) -> Path:
    import tifffile

    bits = _depth(source)
    invert = source is not None and source.format == "tiff" and source.invert
    smax = _sample_max(source, bits)
    q = _quantise(-a if invert else a, bits, smax)
    extratags = [] if smax is None else [(341, "H", 1, int(smax), False)]  # SMaxSampleValue
    if source is not None and source.format == "tiff" and source.dtype.startswith("int"):
        q = (q.astype(np.int64) - 2 ** (bits - 1)).astype(f"<i{bits // 8}")  # signed as read
    kw: dict = {}
    ppm = _ppm(source)
    if ppm is not None:
        kw = {"resolution": (ppm[0] / 100.0, ppm[1] / 100.0), "resolutionunit": "CENTIMETER"}

    def w(tmp: str) -> None:
        tifffile.imwrite(tmp, q, photometric="miniswhite" if invert else "minisblack",
                         description=text, software="medshift_fast", metadata=None,
                         extratags=extratags, **kw)

    return atomic_write(path, w, exclusive)


# --- DICOM ---------------------------------------------------------------------------------
def _drop(ds, names) -> None:
    for kw in names:
        if kw in ds:
            delattr(ds, kw)


def _reencodable(src):
    """The same elements in a new Dataset, free of the source's encoding (implicit VR or big
    endian sources are written as Explicit VR Little Endian; pydicom refuses to convert a read
    dataset in place)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for elem in src:  # iterating decodes each raw element with its own encoding
        ds.add(elem)
    return ds


def _secondary_capture(source: ImageSource | None, series_uid: str):
    """A minimal Secondary Capture dataset for a result whose input was not DICOM."""
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    bits = _depth(source)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality, ds.ConversionType = "OT", "WSD"
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "StudyID", "ReferringPhysicianName", "AccessionNumber",
               "SeriesNumber", "InstanceNumber", "PatientOrientation"):
        setattr(ds, kw, "")
    # one study per run, like the series: derived from the series UID, so stable across files
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[series_uid, "study"])
    mapping = DicomMapping(1.0, 0.0, 0.0, 2.0**bits - 1, "range", False, bits, bits, bits - 1, 0,
                           "MONOCHROME2")
    return ds, mapping


def _write_dicom(path, a, source, derivation, series_uid, series_time, exclusive: bool) -> Path:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

    series_uid = series_uid or new_series_uid()
    notes: list[str] = []
    if source is not None and source.format == "dicom":
        ds, mapping = _reencodable(copy.deepcopy(source.dataset)), source.mapping
        ts = UID(source.transfer_syntax) if source.transfer_syntax else None
        if ts == ExplicitVRBigEndian:  # raw OW / OL / OF values are not byte-swapped: drop them
            _drop(ds, [e.keyword for e in ds if e.VR in ("OW", "OL", "OF", "OD", "OV")])
        if ts is not None and ts.is_transfer_syntax and ts.is_compressed:
            notes.append(f"source pixel data ({ts.name}) decompressed; written uncompressed "
                         "(Explicit VR Little Endian)")
        if ts is not None and str(ts) in _LOSSY_TS or str(ds.get("LossyImageCompression",
                                                                "")) == "01":
            ds.LossyImageCompression = "01"  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
        if source.n_frames > 1:
            notes.append(f"frame {source.frame} of {source.n_frames} of the source")
            per_frame = ds.get("PerFrameFunctionalGroupsSequence")
            sop_name = UID(str(ds.get("SOPClassUID", ""))).name
            if per_frame is not None or "Multi-frame" in sop_name or "Enhanced" in sop_name:
                if per_frame is not None and len(per_frame) > source.frame:
                    ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame[source.frame]])
                ds.NumberOfFrames = 1  # Type 1 in these IODs: one frame, not none
                _drop(ds, _CINE_TAGS[1:])
            else:
                _drop(ds, _CINE_TAGS)
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        if source.n_frames > 1:
            ref.ReferencedFrameNumber = source.frame + 1
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "121322", "DCM"
        code.CodeMeaning = "Source image for image processing operation"
        ref.PurposeOfReferenceCodeSequence = Sequence([code])
        ds.SourceImageSequence = Sequence([ref])
        orig = str(ds.get("SeriesDescription", "") or "")
    else:
        ds, mapping = _secondary_capture(source, series_uid)
        orig = ""
    if source is not None and source.color:
        notes.append("colour source converted to grey (ITU-R BT.601 luma)")
        _drop(ds, _COLOUR_TAGS)
    _drop(ds, _STALE_TAGS)
    _drop(ds, ("PixelData",))

    sop = generate_uid()
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID, ds.SeriesNumber = derived_series(series_uid, source)
    when = series_time or datetime.datetime.now()
    ds.SeriesDate, ds.SeriesTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.ImageType = ["DERIVED", "SECONDARY", *list(ds.get("ImageType", []) or [])[2:]]
    _derivation_code(ds)
    ds.DerivationDescription = _ascii(_description(derivation, notes), _ST_MAX)
    target = (derivation or {}).get("target")
    desc = "MedShift translation" + (f" to {target}" if target else "") + (
        f" of {orig}" if orig else "")
    ds.SeriesDescription = _ascii(desc.replace("\\", "/"), _LO_MAX)
    now = datetime.datetime.now()
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S.%f")

    stored = mapping.from_unit(a)
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, mapping.photometric
    ds.BitsAllocated, ds.BitsStored = mapping.bits_allocated, mapping.bits_stored
    ds.HighBit, ds.PixelRepresentation = mapping.high_bit, mapping.pixel_representation
    ds.add_new(0x7FE00010, "OB" if mapping.bits_allocated == 8 else "OW", stored.tobytes())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128

    def w(tmp: str) -> None:
        ds.save_as(tmp, enforce_file_format=True, implicit_vr=False, little_endian=True)

    return atomic_write(path, w, exclusive)


def write_image(path: str | os.PathLike, img, source: ImageSource | None = None,
                fmt: str = "same", *, derivation: dict | None = None,
                series_uid: str | None = None, series_time: datetime.datetime | None = None,
                exclusive: bool = True) -> Path:
    """Write a translated image in [-1, 1] as PNG, TIFF or DICOM, atomically.

    Args:
        path: destination file (its suffix is not checked; see :func:`output_suffix`).
        img: array-like or tensor (H, W) or (1, H, W), values in [-1, 1] (clipped), at the
            source's geometry.
        source: what ``read_image(..., with_source=True)`` returned for the input, or None
            (a 16-bit PNG / TIFF, or a Secondary Capture DICOM).
        fmt: "same" (the source's kind; PNG without a source), "png", "tiff" or "dicom".
        derivation: provenance for the DICOM DerivationDescription and the PNG / TIFF
            description, e.g. ``{"model": "demo128_adv sha256:ab0ae293ae0bb25c", "tau": 0.6,
            "source": "synthetic_low", "target": "real_normal", "version": "0.1.0"}`` (name
            the run by ``LoadedRun.identity()``, not by its local path).
        series_uid: the run's :func:`new_series_uid` (one per run of the translator; a new one
            per file when None): a DICOM output joins the derived series
            :func:`derived_series` names for its source.
        series_time: SeriesDate / SeriesTime of a DICOM output: when the run started (the same
            for every file of the series); now when None.
        exclusive: refuse to replace an existing file (MedShiftError) instead of replacing it.

    Returns:
        The path written.

    Raises:
        MedShiftError: ``path`` exists (with ``exclusive``), the image is not 2-D / not finite /
            not at the source geometry, or ``fmt`` is unknown.
    """
    f = _resolve(fmt, source)
    a = _check_img(img, source, path)
    if exclusive and os.path.lexists(path):  # fail before the work; atomic_write re-checks
        raise MedShiftError(f"{path} already exists; it is not overwritten (remove it or pass "
                            "--overwrite)")
    if f == "dicom":
        return _write_dicom(path, a, source, derivation, series_uid, series_time, exclusive)
    text = _description(derivation, ["colour source converted to grey (ITU-R BT.601 luma)"]
                        if source is not None and source.color else [])
    if derivation:
        text += " " + json.dumps(derivation, default=str, sort_keys=True)
    return (_write_png if f == "png" else _write_tiff)(path, a, source, text, exclusive)
