"""Writing results in the input's own kind: DICOM / PNG / TIFF round trips, no overwriting."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medshift_fast.data.io import read_image
from medshift_fast.data.writers import (
    DERIVATION_CODE,
    SERIES_OFFSET,
    derived_series,
    new_series_uid,
    output_suffix,
    write_image,
)
from medshift_fast.errors import MedShiftError

tifffile = pytest.importorskip("tifffile")
pydicom = pytest.importorskip("pydicom")

DERIV = {"model": "demo128_adv sha256:ab0ae293ae0bb25c", "tau": 0.6, "source": "synthetic_low",
         "target": "real_normal", "version": "0.1.0"}


def _offline(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not shipped locally (pydicom-data not installed)")
    return path


def _smooth(img: np.ndarray) -> np.ndarray:
    """A stand-in "translation": 3 x 3 box blur (stays within the source's value range)."""
    p = np.pad(img.astype(np.float64), 1, mode="edge")
    h, w = img.shape
    return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _step(src) -> float:
    """One quantisation step of the stored values, in [-1, 1] units."""
    m = src.mapping
    return 2.0 * abs(m.slope) / (m.hi - m.lo)


# --- DICOM -> DICOM ------------------------------------------------------------------------
def test_a_derived_dicom_has_its_own_series_identity(tmp_path):
    """New SeriesNumber (SERIES_OFFSET + the source's), SeriesDate/Time of the translation,
    our DerivationCodeSequence instead of the source's, one derived series per source series
    and run (another run or another source series: another series)."""
    import datetime

    path = _offline("RG1_UNCI.dcm")
    img, src = read_image(path, with_source=True)
    a = pydicom.dcmread(path, stop_before_pixels=True)
    assert "DerivationCodeSequence" in a and a.SeriesDate == "19950926"  # what was copied
    run, when = new_series_uid(), datetime.datetime(2026, 12, 7, 9, 30, 15, 250000)
    outs = [write_image(tmp_path / f"{k}.dcm", img, src, derivation=DERIV, series_uid=run,
                        series_time=when) for k in range(2)]
    b, b2 = (pydicom.dcmread(o, stop_before_pixels=True) for o in outs)
    assert b.SeriesInstanceUID == b2.SeriesInstanceUID != a.SeriesInstanceUID
    assert b.SOPInstanceUID != b2.SOPInstanceUID
    assert int(b.SeriesNumber) == SERIES_OFFSET + int(a.SeriesNumber) == 1001
    assert (b.SeriesDate, b.SeriesTime) == ("20261207", "093015.250000")
    (code,) = b.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == DERIVATION_CODE
    assert any(it.CodingSchemeDesignator == DERIVATION_CODE[1]
               for it in b.CodingSchemeIdentificationSequence)
    assert "/" not in b.DerivationDescription.split(";")[1]  # the run by name + hash, no path
    other = pydicom.dcmread(path)
    other.SeriesInstanceUID, other.SeriesNumber = pydicom.uid.generate_uid(), 7
    other.save_as(tmp_path / "other_series.dcm")
    img2, src2 = read_image(tmp_path / "other_series.dcm", with_source=True)
    c = pydicom.dcmread(write_image(tmp_path / "c.dcm", img2, src2, derivation=DERIV,
                                    series_uid=run), stop_before_pixels=True)
    assert c.SeriesInstanceUID != b.SeriesInstanceUID and int(c.SeriesNumber) == 1007
    d = pydicom.dcmread(write_image(tmp_path / "d.dcm", img, src, derivation=DERIV,
                                    series_uid=new_series_uid()), stop_before_pixels=True)
    assert d.SeriesInstanceUID not in (b.SeriesInstanceUID, a.SeriesInstanceUID)


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
def test_real_cr_dicom_roundtrip(tmp_path, name):
    path = _offline(name)
    img, src = read_image(path, with_source=True)
    y = _smooth(img)
    assert np.abs(y - img).max() > 10 * _step(src)  # a real change, not the identity
    series = new_series_uid()
    out = write_image(tmp_path / "out.dcm", y, src, derivation=DERIV, series_uid=series)
    a, b = pydicom.dcmread(path, stop_before_pixels=True), pydicom.dcmread(out)
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "PhotometricInterpretation", "WindowCenter", "WindowWidth", "PatientID",
               "PatientName", "StudyInstanceUID", "SOPClassUID", "Modality", "PixelSpacing",
               "ImagerPixelSpacing", "LossyImageCompression"):
        assert a.get(kw) == b.get(kw), kw
    assert b.PhotometricInterpretation == "MONOCHROME1" and b.SamplesPerPixel == 1
    assert b.SOPInstanceUID != a.SOPInstanceUID
    assert b.SeriesInstanceUID == derived_series(series, src)[0] != a.SeriesInstanceUID
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    assert b.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(b.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    for part in ("demo128_adv sha256:ab0ae293ae0bb25c", "0.6", "synthetic_low", "real_normal",
                 "0.1.0"):
        assert part in b.DerivationDescription
    assert "translation" in b.SeriesDescription and len(b.SeriesDescription) <= 64
    ref = b.SourceImageSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID) == (a.SOPInstanceUID,
                                                                         a.SOPClassUID)
    assert b.pixel_array.shape == (a.Rows, a.Columns)
    back = read_image(out)
    assert np.abs(back - y).max() <= _step(src) + 1e-6


def test_signed_rescaled_and_big_endian_dicom_roundtrip(tmp_path):
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm"):  # signed + rescale; big endian
        img, src = read_image(_offline(name), allow_modality=True, with_source=True)
        y = np.clip(img * 0.8 + 0.05, -1, 1)
        out = write_image(tmp_path / f"{name}.dcm", y, src)
        ds = pydicom.dcmread(out)
        assert ds.PixelRepresentation == 1 and ds.file_meta.TransferSyntaxUID.is_little_endian
        assert np.abs(read_image(out, allow_modality=True) - y).max() <= _step(src) + 1e-6
    assert (ds.PatientName, ds.Rows) == (pydicom.dcmread(_offline(name)).PatientName, 64)


def test_series_uid_one_per_source_series_and_run(tmp_path):
    img, src = read_image(_offline("CT_small.dcm"), allow_modality=True, with_source=True)
    uid = new_series_uid()
    a = pydicom.dcmread(write_image(tmp_path / "a.dcm", img, src, series_uid=uid))
    b = pydicom.dcmread(write_image(tmp_path / "b.dcm", img, src, series_uid=uid))
    c = pydicom.dcmread(write_image(tmp_path / "c.dcm", img, src))  # None: a fresh series
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == derived_series(uid, src)[0] != \
        c.SeriesInstanceUID
    assert len({a.SOPInstanceUID, b.SOPInstanceUID, c.SOPInstanceUID}) == 3


def test_compressed_source_written_uncompressed(tmp_path):
    path = _offline("RG1_J2KI.dcm")  # lossy JPEG 2000 CR
    try:
        img, src = read_image(path, with_source=True)
    except MedShiftError:
        pytest.skip("no JPEG 2000 decoder here")
    out = write_image(tmp_path / "j.dcm", img, src, derivation=DERIV)
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.LossyImageCompression == "01"  # once lossy, always lossy
    assert "JPEG 2000" in ds.DerivationDescription and "uncompressed" in ds.DerivationDescription
    assert np.abs(read_image(out) - img).max() <= _step(src) + 1e-6


def _multiframe_xa(path, frames=3):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # XA Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PatientID = "XA", "P1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 6, 10, frames
    ds.FrameIncrementPointer, ds.FrameTime = 0x00181063, 33.3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    px = np.stack([np.full((6, 10), 50 * k, np.uint8) for k in range(frames)])
    ds.PixelData = px.tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def test_multiframe_source_gives_single_frame_output(tmp_path):
    img, src = read_image(_multiframe_xa(tmp_path / "xa.dcm"), frame=2, with_source=True)
    out = write_image(tmp_path / "xa_out.dcm", img, src)
    ds = pydicom.dcmread(out)
    for kw in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime"):
        assert kw not in ds, kw
    assert ds.SourceImageSequence[0].ReferencedFrameNumber == 3
    assert "frame 2 of 3" in ds.DerivationDescription
    np.testing.assert_allclose(read_image(out), img, atol=1e-6)  # 8-bit, exact levels
    # Enhanced MR (NumberOfFrames is Type 1 there): one frame, one per-frame item
    img, src = read_image(_offline("emri_small.dcm"), allow_modality=True, frame=4,
                          with_source=True)
    ds = pydicom.dcmread(write_image(tmp_path / "e.dcm", img, src))
    assert ds.NumberOfFrames == 1 and ds.pixel_array.shape == (64, 64)
    assert len(ds.get("PerFrameFunctionalGroupsSequence", [None])) == 1


def test_colour_dicom_written_grey(tmp_path):
    img, src = read_image(_offline("SC_rgb.dcm"), allow_rgb=True, with_source=True)
    ds = pydicom.dcmread(write_image(tmp_path / "g.dcm", img, src))
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsStored) == (1, "MONOCHROME2",
                                                                                 8)
    assert "PlanarConfiguration" not in ds and "grey" in ds.DerivationDescription
    assert np.abs(read_image(tmp_path / "g.dcm") - img).max() <= 1 / 255 + 1e-6


def test_png_source_to_dicom_secondary_capture(tmp_path):
    img = np.random.default_rng(0).uniform(-1, 1, (9, 14))
    uid = new_series_uid()
    a = write_image(tmp_path / "a.dcm", img, None, "dicom", series_uid=uid, derivation=DERIV)
    b = write_image(tmp_path / "b.dcm", img, None, "dicom", series_uid=uid)
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    assert da.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and da.BitsStored == 16
    assert da.StudyInstanceUID == db.StudyInstanceUID and da.SeriesInstanceUID == uid
    assert np.abs(read_image(a) - img).max() <= 1 / 65535 + 1e-6


def test_derivation_text_kept_within_vr_limits(tmp_path):
    img, src = read_image(_offline("CT_small.dcm"), allow_modality=True, with_source=True)
    d = dict(DERIV, model="runs/" + "é" * 2000, target="t" * 100)
    ds = pydicom.dcmread(write_image(tmp_path / "l.dcm", img, src, derivation=d))
    assert len(ds.DerivationDescription) <= 1024 and len(ds.SeriesDescription) <= 64
    assert ds.DerivationDescription.isascii()


# --- PNG / TIFF ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
def test_png_roundtrip_keeps_depth_and_resolution(tmp_path, bits):
    rng = np.random.default_rng(bits)
    src_px = rng.integers(0, 2**bits, (11, 27)).astype(np.uint8 if bits == 8 else np.uint16)
    Image.fromarray(src_px).save(tmp_path / "in.png", dpi=(254, 127))
    img, src = read_image(tmp_path / "in.png", with_source=True)
    y = _smooth(img)
    out = write_image(tmp_path / "out.png", y, src)
    with Image.open(out) as im:
        assert im.size == (27, 11) and (im.mode == "L") == (bits == 8)
        np.testing.assert_allclose(im.info["dpi"], (254, 127), rtol=1e-3)
    back, s2 = read_image(out, with_source=True)
    assert (s2.bits, s2.shape) == (bits, (11, 27))
    assert np.abs(back - y).max() <= 1 / (2**bits - 1) + 1e-6
    np.testing.assert_allclose(s2.pixels_per_metre, src.pixels_per_metre, atol=0.5)


@pytest.mark.parametrize("dtype,photometric", [("uint8", "minisblack"), ("uint16", "minisblack"),
                                               ("int16", "minisblack"), ("uint16", "miniswhite")])
def test_tiff_roundtrip_keeps_kind(tmp_path, dtype, photometric):
    info = np.iinfo(dtype)
    px = np.random.default_rng(0).integers(info.min, info.max, (13, 6), endpoint=True)
    tifffile.imwrite(tmp_path / "in.tif", px.astype(dtype), photometric=photometric,
                     resolution=(40.0, 20.0), resolutionunit="CENTIMETER")
    img, src = read_image(tmp_path / "in.tif", with_source=True)
    y = _smooth(img)
    out = write_image(tmp_path / "out.tif", y, src)
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        assert page.dtype == np.dtype(dtype) and page.shape == (13, 6)
        assert page.photometric.name.lower() == photometric
    back, s2 = read_image(out, with_source=True)
    assert np.abs(back - y).max() <= 1 / (info.max - info.min) + 1e-6
    np.testing.assert_allclose(s2.pixels_per_metre, (4000, 2000), rtol=1e-6)


def test_float_tiff_and_dicom_sources_default_to_16_bit(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    img, src = read_image(tmp_path / "f.tif", with_source=True)
    assert src.float_range == (0.0, 1.0)
    with tifffile.TiffFile(write_image(tmp_path / "f_out.tif", img, src)) as tf:
        assert tf.pages[0].dtype == np.uint16
    img, src = read_image(_offline("CT_small.dcm"), allow_modality=True, with_source=True)
    out = write_image(tmp_path / "d.png", img, src, "png")
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")
    assert np.abs(read_image(out) - img).max() <= 1 / 65535 + 1e-6
    _, s2 = read_image(out, with_source=True)
    sp = [float(v) for v in pydicom.dcmread(_offline("CT_small.dcm")).PixelSpacing]
    np.testing.assert_allclose(s2.pixels_per_metre, (1000 / sp[1], 1000 / sp[0]), atol=0.5)


def test_rgb_png_written_grey(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img, src = read_image(tmp_path / "c.png", allow_rgb=True, with_source=True)
    out = write_image(tmp_path / "g.png", img, src)
    with Image.open(out) as im:
        assert im.mode == "L"
    assert np.abs(read_image(out) - img).max() <= 1 / 255 + 1e-6


# --- never overwrite, never leave partial files --------------------------------------------
def test_existing_output_refused(tmp_path):
    img = np.zeros((4, 5))
    p = write_image(tmp_path / "o.png", img)
    before = p.read_bytes()
    for fmt in ("png", "dicom", "tiff"):
        with pytest.raises(MedShiftError, match="already exists") as ei:
            write_image(p, img + 0.5, None, fmt)
        assert str(p) in str(ei.value) and "--overwrite" in str(ei.value)
    assert p.read_bytes() == before
    write_image(p, img + 0.5, exclusive=False)
    assert np.allclose(read_image(p), 0.5, atol=1e-4)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import tifffile as tf_mod

    def broken(path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"II*\0 partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf_mod, "imwrite", broken)
    with pytest.raises(OSError):
        write_image(tmp_path / "x.tif", np.zeros((3, 3)), None, "tiff")
    assert list(tmp_path.iterdir()) == []


def test_bad_results_refused(tmp_path):
    img, src = read_image(_offline("CT_small.dcm"), allow_modality=True, with_source=True)
    with pytest.raises(MedShiftError, match="geometry"):
        write_image(tmp_path / "a.dcm", img[:100], src)
    with pytest.raises(MedShiftError, match="NaN"):
        write_image(tmp_path / "b.png", np.full((3, 3), np.nan))
    with pytest.raises(MedShiftError, match="unknown output format"):
        write_image(tmp_path / "c.jpg", np.zeros((3, 3)), None, "jpeg")
    assert list(tmp_path.iterdir()) == []


def test_output_suffix(tmp_path):
    tifffile.imwrite(tmp_path / "a.TIF", np.zeros((2, 2), np.uint8))
    _, src = read_image(tmp_path / "a.TIF", with_source=True)
    assert output_suffix("same", src) == ".tif" and output_suffix("tif", src) == ".tif"
    assert output_suffix("dicom", src) == ".dcm" and output_suffix("png", src) == ".png"
    assert output_suffix() == ".png" and output_suffix("tiff") == ".tiff"
    with pytest.raises(MedShiftError, match="unknown output format"):
        output_suffix("bmp")
