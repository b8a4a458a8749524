"""Datasets, image I/O (PNG/TIFF/DICOM -> [-1, 1]) and the X-DigiSkull-like X-ray simulator.

* :func:`read_image`, :func:`probe_image` (vetting), :func:`write_png16`, :func:`to_uint16` -
  reading (``io.py`` with one module per format); :func:`write_image` - results in the input's
  own kind (``writers.py``); :func:`plan_fit` - geometry to the network and back
  (``geometry.py``).
* :class:`FolderDataset` - ROOT/<domain>/* with optional manifest.csv (``dataset.py``).
* :func:`simulate` - writes a five-domain, pixel-aligned synthetic dataset (``simulator.py``).
"""

from __future__ import annotations

from typing import Any

from .dataset import (
    DOMAINS,
    SPLITS,
    FolderDataset,
    Sample,
    fit_square,
    hash_split,
    load_split,
    order_domains,
    parse_domain_map,
)
from .geometry import Fit, plan_fit
from .io import (
    IMAGE_EXT,
    ImageSource,
    image_format,
    probe_image,
    read_image,
    to_uint16,
    write_png16,
)
from .writers import new_series_uid, output_suffix, write_image

__all__ = [
    "DOMAINS",
    "Fit",
    "ImageSource",
    "new_series_uid",
    "output_suffix",
    "plan_fit",
    "write_image",
    "IMAGE_EXT",
    "SPLITS",
    "FolderDataset",
    "Sample",
    "fit_square",
    "hash_split",
    "image_format",
    "load_split",
    "order_domains",
    "parse_domain_map",
    "probe_image",
    "read_image",
    "simulate",
    "to_uint16",
    "write_png16",
]


def __getattr__(name: str) -> Any:
    # the simulator pulls in the phantom/physics modules; load them only when asked for
    if name in ("simulate", "SimConfig"):
        from . import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module 'medshift_fast.data' has no attribute {name!r}")
