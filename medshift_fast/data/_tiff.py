"""TIFF: probed from the first page's tags, decoded with tifffile."""

from __future__ import annotations

import numpy as np

from ._records import (
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


def _probe_tiff(path) -> _Header:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = [p for p in tf.pages if not getattr(p, "is_reduced", False)]  # no thumbnails
        if not pages:
            raise _fail(path, "TIFF has no image page")
        p = pages[0]
        photo = int(p.photometric)
        dt = np.dtype(p.dtype) if p.dtype is not None else np.dtype(np.uint8)
        smax = p.tags["SMaxSampleValue"].value if "SMaxSampleValue" in p.tags else None
        if isinstance(smax, (tuple, list)):
            smax = max(smax) if smax else None
        extra = {"photometric": photo, "bps": int(p.bitspersample), "dtype": dt,
                 "depth3d": int(getattr(p, "imagedepth", 1) or 1), "ppm": _tiff_ppm(p),
                 "smax": None if smax is None else int(smax)}
        if dt.kind == "u":
            extra["significant_bits"] = _declared_bits(extra["bps"], extra["smax"],
                                                       dt.itemsize * 8)
        extra["spacing_mm"] = spacing_from_ppm(extra["ppm"])
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
        cbits = dt.itemsize * 8
        declared = _declared_bits(bps, hdr.extra.get("smax"), cbits)
        m, used = significant_max(int(a.max()) if a.size else 0, cbits, declared,
                                  hdr.extra.get("input_bits"), path)
        img = _int_to_unit(a, cbits, m)
        if used is not None:
            out.update(sample_max=m, smax_tag=int(m))
    img = -img if invert else img
    return img, dict(out, bits=dt.itemsize * 8, dtype=dt.name, invert=invert)


def _declared_bits(bps: int, smax: int | None, container: int) -> int | None:
    """Significant bits a TIFF declares: BitsPerSample below the container's (12-bit data in
    uint16), else the bits of SMaxSampleValue when it is below the container's maximum."""
    if 1 <= bps < container:
        return int(bps)
    if smax is not None and 0 < smax < 2**container - 1:
        return int(smax).bit_length()
    return None


