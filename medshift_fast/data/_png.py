"""PNG: every chunk walked and its CRC verified (no decompression), then decoded."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from ._records import (
    _PNG_SIG,
    _fail,
    _Header,
    _int_to_unit,
    _luma,
    _one_bit_refusal,
    _refuse,
    _rgb_refusal,
    significant_max,
    spacing_from_ppm,
)


def _scan_png(path, verify_crc: bool = True) -> dict:
    """Walk every chunk, verifying its CRC (libpng does, Pillow skips IDAT); no decompression.

    Without ``verify_crc`` only the small header chunks are read; the rest are seeked over.
    """
    info: dict = {"frames": 1, "ppm": None, "sbit": None}
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
            keep = ctype in (b"IHDR", b"acTL", b"pHYs", b"sBIT")
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
            elif ctype == b"sBIT" and n >= 1:
                info["sbit"] = max(data)  # grey: one value; colour: per channel
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
    sbit = s["sbit"] if s["sbit"] is not None and not color and s["sbit"] < max(bits, 8) \
        else None
    return _Header("png", "16" if bits == 16 else "8", (s["height"], s["width"]), s["frames"],
                   color, extra={**s, "sbit": sbit, "significant_bits": sbit,
                                 "spacing_mm": spacing_from_ppm(s["ppm"])})


def _vet_png(path, hdr: _Header, allow_rgb: bool) -> None:
    from PIL import Image

    bits, ctype = hdr.extra["bits"], hdr.extra["ctype"]
    h, w = hdr.shape
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if limit and h * w > limit:  # Pillow refuses it as a decompression bomb, whole or not
        raise _refuse(path, f"it is {w}x{h} px ({h * w / 1e6:.0f} megapixels): too large for "
                      f"the PNG decoder, which refuses images over {limit / 1e6:.0f} megapixels "
                      "(a guard against decompression bombs)", "crop or downsample it, or save "
                      "it as TIFF (read without that limit)")
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
        else:  # grey 16-bit, 2/4/8-bit (Pillow scales 2/4-bit to 0..255), grey+alpha: dropped
            if bits16:
                a = np.asarray(im).astype(np.uint16)
            else:
                a = np.asarray(im.convert("L") if im.mode not in ("L", "LA") else im)
                a = a[..., 0] if a.ndim == 3 else a
            b = 16 if bits16 else 8
            m, used = significant_max(int(a.max()) if a.size else 0, b, hdr.extra.get("sbit"),
                                      hdr.extra.get("input_bits"), path)
            img = _int_to_unit(a, b, m)
            bits = 16 if bits16 else 8
            return img, dict(bits=bits, dtype=f"uint{bits}", pixels_per_metre=hdr.extra["ppm"],
                             sample_max=m if used is not None else None,
                             sbit=hdr.extra.get("sbit"))
    bits = 16 if bits16 else 8
    return img, dict(bits=bits, dtype=f"uint{bits}", pixels_per_metre=hdr.extra["ppm"])


