"""Image reading and vetting: PNG / TIFF / DICOM decoding to [-1, 1], bad files, refusals."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medshift_fast.data.io import (
    RADIOGRAPHIC_MODALITIES,
    probe_image,
    read_image,
    to_uint16,
    write_png16,
)
from medshift_fast.errors import MedShiftError

tifffile = pytest.importorskip("tifffile")
pydicom = pytest.importorskip("pydicom")

LUMA = np.array([0.299, 0.587, 0.114])


def _translate_flags() -> dict[str, str]:
    import argparse

    from medshift_fast.cli import build_parser, command_flags

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return command_flags(sub.choices["translate"])


def _refused(fn, path, *remedy: str, **kw) -> str:
    """Call fn(path, **kw) as `medshift translate` does (its flags are the fixes a message may
    name), expect a one-line MedShiftError naming the file and the remedy."""
    from medshift_fast.errors import offering

    with pytest.raises(MedShiftError) as ei, offering(_translate_flags(), kind="flag"):
        fn(path, **kw)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg.strip(), msg
    for r in remedy:
        assert r in msg, msg
    return msg


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


def test_png8_grey(tmp_path):
    a = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png"), [[-1, 128 / 255 * 2 - 1, 1]],
                               atol=1e-6)
    info = probe_image(tmp_path / "g.png")
    assert (info.depth, info.shape, info.frames, info.color) == ("8", (1, 3), 1, False)
    img, src = read_image(tmp_path / "g.png", with_source=True)
    assert (src.format, src.bits, src.dtype, src.color, src.shape) == ("png", 8, "uint8", False,
                                                                        (1, 3))


def test_tiff_kinds(tmp_path):
    tifffile.imwrite(tmp_path / "u16.tif", np.array([[0, 65535]], dtype=np.uint16))
    np.testing.assert_allclose(read_image(tmp_path / "u16.tif"), [[-1, 1]])
    tifffile.imwrite(tmp_path / "f.tiff", np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.tiff"), [[-1, 0, 1]])
    tifffile.imwrite(tmp_path / "s16.tif", np.array([[-32768, 32767]], dtype=np.int16))
    np.testing.assert_allclose(read_image(tmp_path / "s16.tif"), [[-1, 1]])
    tifffile.imwrite(tmp_path / "w.tif", np.array([[0, 255]], dtype=np.uint8),
                     photometric="miniswhite")  # 0 = white
    np.testing.assert_allclose(read_image(tmp_path / "w.tif"), [[1, -1]])
    tifffile.imwrite(tmp_path / "big.tif", np.array([[0.0, 7.0]], dtype=np.float32))
    with pytest.raises(MedShiftError, match="big.tif"):
        read_image(tmp_path / "big.tif")


def _dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
           bits=12, with_pixels=True, modality="DX", frames=None, voi_function=None,
           transfer_syntax=None):
    """A small synthetic DX image; pixels (H, W) or (F, H, W) for ``frames``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if with_pixels and transfer_syntax:  # compressed: any bytes, encapsulated (never decoded)
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 60])
        ds["PixelData"].VR = "OB"
    elif with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


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
    img, src = read_image(tmp_path / "w.dcm", with_source=True)
    np.testing.assert_allclose(img, want, atol=1e-5)
    m = src.mapping
    assert (m.voi, m.lo, m.hi, m.intercept, m.invert) == ("LINEAR", 0.0, 2000.0, -1024.0, False)
    # LINEAR_EXACT: lo, hi = c -+ w / 2 exactly
    _dicom(tmp_path / "x.dcm", px, window=(2000, 1000), voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(tmp_path / "x.dcm"),
                               np.clip((px.astype(float) - 1500) / 1000, 0, 1) * 2 - 1, atol=1e-6)


def test_dicom_without_pixel_data(tmp_path):
    _dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)), with_pixels=False)
    with pytest.raises(MedShiftError, match="nopix.dcm.*no pixel data"):
        read_image(tmp_path / "nopix.dcm")
    with pytest.raises(MedShiftError, match="nopix.dcm"):
        probe_image(tmp_path / "nopix.dcm")


def test_dicom_probe_reads_headers_only(tmp_path):
    """A DICOM whose pixel data is cut short passes the probe (no pixel read) but not the read."""
    p = _dicom(tmp_path / "cut.dcm", np.arange(64 * 64).reshape(64, 64) % 4096)
    p.write_bytes(p.read_bytes()[:-4000])
    assert probe_image(p).shape == (64, 64)
    with pytest.raises(MedShiftError, match="cut.dcm"):
        read_image(p)


def _offline(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never fetch: pydicom(-data) ship them
    if path is None:
        pytest.skip(f"{name} not shipped locally (pydicom-data not installed)")
    return path


def test_real_cr_radiograph_rg1():
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
    info = probe_image(path)
    assert (info.modality, info.frames, info.color, info.depth) == ("CR", 1, False, "16")


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm", "RG3_UNCI.dcm"])
def test_real_offline_dicoms(name):
    path = _offline(name)
    ds = pydicom.dcmread(path)
    img = read_image(path, allow_modality=True)
    assert img.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(img).all() and -1 <= img.min() < img.max() <= 1
    if ds.PhotometricInterpretation == "MONOCHROME2":  # positive correlation with stored values
        raw = ds.pixel_array.astype(float).ravel()
        assert np.corrcoef(raw, img.ravel())[0, 1] > 0.5


def test_compressed_head_ct_if_decoder_present():
    path = _offline("J2K_pixelrep_mismatch.dcm")
    try:
        ref = pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - no JPEG 2000 plugin installed
        pytest.skip("no JPEG 2000 decoder for pydicom here")
    img = read_image(path, allow_modality=["CT"])
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
        p = tmp_path / "bad_nan.tif"
        tifffile.imwrite(p, np.array([[0.0, np.nan]], dtype=np.float32))
    msg = _refused(read_image, p, "skip")
    if case == "nan":
        assert "NaN" in msg
    else:  # the header / chunk walk already catches these
        _refused(probe_image, p, "re-export or delete it")


def test_unsupported_extension(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(MedShiftError, match="x.jpg.*unsupported"):
        read_image(tmp_path / "x.jpg")


# --- refusals: DICOM modality --------------------------------------------------------------
@pytest.mark.parametrize("name,mod", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_non_radiograph_modality_refused(name, mod):
    path = _offline(name)
    for fn in (probe_image, read_image):
        msg = _refused(fn, path, f"Modality {mod}", f"--allow-modality {mod}")
        assert "not a radiograph" in msg
    for allow in (True, {mod}, [mod.lower()], f"US, {mod}"):
        assert read_image(path, allow_modality=allow).shape == (pydicom.dcmread(path).Rows,) * 2
    _refused(read_image, path, "--allow-modality", allow_modality={"US"})  # another code only


@pytest.mark.parametrize("mod", ["NM", "PT", "US", "RTDOSE", "SEG"])
def test_other_modalities_refused(tmp_path, mod):
    p = _dicom(tmp_path / f"{mod}.dcm", np.zeros((3, 5)), modality=mod)
    _refused(probe_image, p, f"Modality {mod}", f"--allow-modality {mod}")
    assert read_image(p, allow_modality=True).shape == (3, 5)


@pytest.mark.parametrize("mod", sorted(RADIOGRAPHIC_MODALITIES - {""}) + [None])
def test_radiographic_modalities_accepted(tmp_path, mod):
    px = np.arange(15).reshape(3, 5) * 200
    p = _dicom(tmp_path / "r.dcm", px, modality=mod)
    assert {"CR", "DX", "RF", "XA", "MG", "IO", "PX", "RG", "OT"} <= RADIOGRAPHIC_MODALITIES
    np.testing.assert_allclose(read_image(p), px / 4095 * 2 - 1, atol=1e-6)
    assert probe_image(p).modality == (mod or "")


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "liver.dcm"])
def test_segmentation_one_bit_refused(name):
    path = _offline(name)
    for allow in (False, True):  # even with --allow-modality: a mask is not a radiograph
        msg = _refused(probe_image, path, "1-bit", "remove it from the inputs",
                       allow_modality=allow, frame=0)
        assert "segmentation" in msg


def test_one_bit_png_and_tiff_refused(tmp_path):
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "m.png")
    tifffile.imwrite(tmp_path / "m.tif", np.eye(4, dtype=bool))
    for p in (tmp_path / "m.png", tmp_path / "m.tif"):
        _refused(read_image, p, "1-bit", "remove it from the inputs")


# --- refusals: multi-frame -----------------------------------------------------------------
def test_multiframe_dicom_needs_frame():
    path = _offline("emri_small.dcm")  # MR, 10 frames of 64 x 64
    msg = _refused(probe_image, path, "--frame", "0..9", allow_modality=True)
    assert "10 frames" in msg
    _refused(read_image, path, "--frame", allow_modality=True)
    _refused(read_image, path, "0..9", allow_modality=True, frame=10)
    ds = pydicom.dcmread(path)
    img, src = read_image(path, allow_modality=True, frame=3, with_source=True)
    m = src.mapping
    np.testing.assert_allclose(img, m.to_unit(ds.pixel_array[3]), atol=1e-7)
    assert not np.allclose(img, m.to_unit(ds.pixel_array[0]))
    assert (src.frame, src.n_frames) == (3, 10)
    assert probe_image(path, allow_modality=True, frame=3).frames == 10


def test_multiframe_synthetic_dx_needs_frame(tmp_path):
    px = np.stack([np.full((4, 6), 1000 * k) for k in range(3)])
    p = _dicom(tmp_path / "cine.dcm", px, frames=3)
    _refused(read_image, p, "--frame", "0..2")
    np.testing.assert_allclose(read_image(p, frame=2), np.full((4, 6), 2000 / 4095 * 2 - 1),
                               atol=1e-6)


def test_multipage_tiff_needs_frame(tmp_path):
    pages = np.stack([np.full((5, 7), 10000 * k, np.uint16) for k in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    _refused(probe_image, tmp_path / "stack.tif", "multi-page TIFF", "--frame", "0..2")
    img, src = read_image(tmp_path / "stack.tif", frame=1, with_source=True)
    np.testing.assert_allclose(img, np.full((5, 7), 10000 / 65535 * 2 - 1), atol=1e-6)
    assert (src.frame, src.n_frames) == (1, 3)


def test_animated_png_needs_frame(tmp_path):
    frames = [Image.fromarray(np.full((6, 9), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    _refused(read_image, tmp_path / "anim.png", "animated PNG", "--frame")
    np.testing.assert_allclose(read_image(tmp_path / "anim.png", frame=2), 80 / 255 * 2 - 1,
                               atol=1e-6)


# --- refusals: colour ----------------------------------------------------------------------
RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                [[10, 20, 30], [200, 100, 50], [255, 255, 255]]], dtype=np.uint8)


def _rgb_dicom(path, rgb):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def _rgb_files(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "c.tif", RGB, photometric="rgb")
    return [tmp_path / "c.png", tmp_path / "c.tif", _rgb_dicom(tmp_path / "c.dcm", RGB)]


@pytest.mark.parametrize("ext", ["png", "tif", "dcm"])
def test_rgb_refused(tmp_path, ext):
    p = {f.suffix[1:]: f for f in _rgb_files(tmp_path)}[ext]
    for fn in (probe_image, read_image):
        msg = _refused(fn, p, "--allow-rgb", "colour")
        assert "RGB" in msg


def test_rgb_converted_identically_in_every_format(tmp_path):
    want = (RGB.astype(float) @ LUMA / 255 * 2 - 1).astype(np.float32)
    out = []
    for p in _rgb_files(tmp_path):
        img, src = read_image(p, allow_rgb=True, with_source=True)
        assert src.color and src.bits == 8 and probe_image(p, allow_rgb=True).color
        out.append(img)
    for img in out:
        np.testing.assert_array_equal(img, out[0])
    np.testing.assert_allclose(out[0], want, atol=1e-7)
    # RGBA: the alpha channel is ignored, the same formula applies
    Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])).save(tmp_path / "a.png")
    _refused(read_image, tmp_path / "a.png", "RGBA", "--allow-rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", allow_rgb=True), out[0])


def test_palette_colour_refused_then_converted(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.putdata([0, 1, 2])
    im.save(tmp_path / "pal.png")
    _refused(read_image, tmp_path / "pal.png", "palette", "--allow-rgb")
    np.testing.assert_allclose(read_image(tmp_path / "pal.png", allow_rgb=True),
                               [LUMA * 2 - 1], atol=1e-6)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[[0, 1, 2], [0, 1, 2]] = 65535  # index k -> pure red / green / blue
    tifffile.imwrite(tmp_path / "pal.tif", np.array([[0, 1, 2]], np.uint8), photometric="palette",
                     colormap=cmap)
    _refused(read_image, tmp_path / "pal.tif", "palette", "--allow-rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.tif", allow_rgb=True),
                                  read_image(tmp_path / "pal.png", allow_rgb=True))
    path = _offline("OBXXXX1A.dcm")  # US, PALETTE COLOR with 16-bit LUT entries
    _refused(read_image, path, "PALETTE COLOR", "--allow-rgb", allow_modality=True)
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    rgb = apply_color_lut(ds.pixel_array, ds).astype(float)
    np.testing.assert_allclose(read_image(path, allow_rgb=True, allow_modality=True),
                               rgb @ LUMA / 65535 * 2 - 1, atol=1e-6)


def _png_bytes(arr16: np.ndarray, ctype: int) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    h, w = arr16.shape[:2]
    raw = b"".join(b"\0" + arr16[i].astype(">u2").tobytes() for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_rgb16_png_converted_at_full_precision(tmp_path):
    """Pillow alone keeps only the high byte of 16-bit colour PNG samples; the reader does not."""
    rgb = np.random.default_rng(1).integers(0, 65536, (7, 5, 3)).astype(np.uint16)
    (tmp_path / "c16.png").write_bytes(_png_bytes(rgb, 2))
    img, src = read_image(tmp_path / "c16.png", allow_rgb=True, with_source=True)
    np.testing.assert_allclose(img, rgb.astype(float) @ LUMA / 65535 * 2 - 1, atol=1e-6)
    assert (src.bits, src.color) == (16, True)


# --- refusals: damaged PNG / undecodable DICOM ---------------------------------------------
def test_png_bad_crc_refused(tmp_path):
    p = tmp_path / "crc.png"
    write_png16(p, np.random.default_rng(0).uniform(-1, 1, (16, 24)))
    data = bytearray(p.read_bytes())
    idat = data.index(b"IDAT")
    n = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + n] ^= 0x01  # one bit of the IDAT chunk's CRC; the pixels are intact
    p.write_bytes(bytes(data))
    for fn in (probe_image, read_image):
        msg = _refused(fn, p, "CRC", "IDAT", "re-export or delete it")
        assert f"byte {idat - 4}" in msg
    assert probe_image(p, verify_crc=False).shape == (16, 24)  # the opt-out for vetted files


def test_compressed_dicom_without_decoder_names_the_plugin():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    path = _offline("JPEG-LL.dcm")  # NM, JPEG Lossless SV1, 1024 x 256
    for fn in (probe_image, read_image):  # refused from the header, before any decoding
        msg = _refused(fn, path, "JPEG Lossless", "1.2.840.10008.1.2.4.70", "pylibjpeg-libjpeg",
                       "python-gdcm", allow_modality=True)
        assert "re-export" not in msg


def test_jpeg_ls_without_decoder_names_the_plugin(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    p = _dicom(tmp_path / "ls.dcm", np.zeros((4, 4)), transfer_syntax=JPEGLSLossless)
    _refused(probe_image, p, "JPEG-LS Lossless", "pyjpegls", "python-gdcm")


def test_jpeg2000_advice_when_no_plugin(monkeypatch):
    """JPEG 2000 decodes through Pillow here; without any plugin the advice names openjpeg."""
    import pydicom.pixels

    class NoPlugin:
        is_available, available_plugins = False, ()

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugin())
    path = _offline("RG1_J2KI.dcm")
    _refused(read_image, path, "JPEG 2000", "pylibjpeg-openjpeg", "python-gdcm")
