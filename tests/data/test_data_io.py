"""Image I/O: PNG / TIFF / DICOM decoding to [-1, 1], 16-bit PNG writing, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medshift_fast.data import probe_image, read_image, to_uint16, write_png16
from medshift_fast.errors import MedShiftError


def test_png16_roundtrip_and_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (23, 37))
    write_png16(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.float32 and back.shape == (23, 37)
    assert np.abs(back - img).max() <= 1.0 / 65535 + 1e-6
    q = to_uint16(np.array([[-1.0, 0.0, 1.0, 2.0, -3.0]]))
    assert q.tolist() == [[0, 32768, 65535, 65535, 0]]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_png8_and_rgb(tmp_path):
    a = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png"), [[-1, 128 / 255 * 2 - 1, 1]],
                               atol=1e-6)
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), read_image(tmp_path / "g.png"),
                               atol=1e-6)
    assert probe_image(tmp_path / "g.png").depth == "8"


def test_tiff_kinds(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "u16.tif", np.array([[0, 65535]], dtype=np.uint16))
    np.testing.assert_allclose(read_image(tmp_path / "u16.tif"), [[-1, 1]])
    tifffile.imwrite(tmp_path / "f.tiff", np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.tiff"), [[-1, 0, 1]])
    tifffile.imwrite(tmp_path / "s16.tif", np.array([[-32768, 32767]], dtype=np.int16))
    np.testing.assert_allclose(read_image(tmp_path / "s16.tif"), [[-1, 1]])
    tifffile.imwrite(tmp_path / "big.tif", np.array([[0.0, 7.0]], dtype=np.float32))
    with pytest.raises(MedShiftError, match="big.tif"):
        read_image(tmp_path / "big.tif")


def _dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
           bits=12, with_pixels=True):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pydicom


def test_dicom_monochrome_rescale_window(tmp_path):
    px = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)
    _dicom(tmp_path / "m2.dcm", px)
    np.testing.assert_allclose(read_image(tmp_path / "m2.dcm"), px / 4095 * 2 - 1, atol=1e-6)
    _dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(tmp_path / "m1.dcm"), -(px / 4095 * 2 - 1), atol=1e-6)
    # rescale to HU-like values, then window [0, 2000] (center 1000.5, width 2001 -> lo 0, hi 2000)
    _dicom(tmp_path / "w.dcm", px, slope=1.0, intercept=-1024, window=(1000.5, 2001))
    hu = px.astype(float) - 1024
    want = np.clip(hu / 2000, 0, 1) * 2 - 1
    np.testing.assert_allclose(read_image(tmp_path / "w.dcm"), want, atol=1e-5)


def test_dicom_without_pixel_data(tmp_path):
    _dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)), with_pixels=False)
    with pytest.raises(MedShiftError, match="nopix.dcm.*no pixel data"):
        read_image(tmp_path / "nopix.dcm")
    with pytest.raises(MedShiftError, match="nopix.dcm"):
        probe_image(tmp_path / "nopix.dcm")


def _offline(name):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never fetch: pydicom(-data) ship them
    if path is None:
        pytest.skip(f"{name} not shipped locally (pydicom-data not installed)")
    return path


def test_real_cr_radiograph_rg1():
    import pydicom

    path = _offline("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_image(path)
    assert img.shape == (1955, 1841) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.min() >= -1 and img.max() <= 1
    # MONOCHROME1: high stored value = dark, so the output must fall as the stored value rises
    raw = ds.pixel_array.astype(float).ravel()
    corr = np.corrcoef(raw[::97], img.ravel()[::97])[0, 1]
    assert corr < -0.99
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    lo = c - 0.5 - (w - 1) / 2
    want = -(np.clip((raw - lo) / (w - 1), 0, 1) * 2 - 1)
    np.testing.assert_allclose(img.ravel()[::97], want[::97], atol=1e-5)


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm", "RG3_UNCI.dcm"])
def test_real_offline_dicoms(name):
    import pydicom

    path = _offline(name)
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert img.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(img).all() and -1 <= img.min() < img.max() <= 1
    if ds.PhotometricInterpretation == "MONOCHROME2":  # positive correlation with stored values
        raw = ds.pixel_array.astype(float).ravel()
        assert np.corrcoef(raw, img.ravel())[0, 1] > 0.5


def test_compressed_head_ct_if_decoder_present():
    import pydicom

    path = _offline("J2K_pixelrep_mismatch.dcm")
    try:
        ref = pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - no JPEG 2000 plugin installed
        pytest.skip("no JPEG 2000 decoder for pydicom here")
    img = read_image(path)
    assert img.shape == ref.shape == (512, 512) and np.isfinite(img).all()


@pytest.mark.parametrize("case", ["truncated", "text", "empty", "wrong_content", "nan"])
def test_bad_files_name_the_file(tmp_path, case):
    p = tmp_path / f"bad_{case}.png"
    if case == "truncated":
        write_png16(p, np.random.default_rng(0).uniform(-1, 1, (64, 64)))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "text":
        p.write_text("not an image\n")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "wrong_content":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(p, format="JPEG")
    else:
        tifffile = pytest.importorskip("tifffile")
        p = tmp_path / "bad_nan.tif"
        tifffile.imwrite(p, np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(MedShiftError, match=f"bad_{case}") as ei:
        read_image(p)
    assert "\n" not in str(ei.value).strip()
    if case == "nan":
        assert "NaN" in str(ei.value)


def test_unsupported_extension(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(MedShiftError, match="x.jpg.*unsupported"):
        read_image(tmp_path / "x.jpg")
