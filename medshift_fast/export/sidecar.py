"""The JSON sidecar ``FILE.json`` written beside every engine file.

It records what the engine computes (settings, domains, sizes, I/O names and dtypes, what its
input must be: ``"input"``), which versions built it, and the SHA-256 of the engine file, so
that a corrupted, replaced or wrong-version engine is refused with a clear
:class:`MedShiftError` before any runtime touches it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import MedShiftError
from ..fileio import read_format_json, sha256_file

ENGINE_FORMAT = "medshift_fast-engine"
ENGINE_FORMAT_VERSION = 1
FORMATS = ("onnx", "aoti", "tensorrt")
SUFFIXES = {"onnx": (".onnx",), "aoti": (".pt2",), "tensorrt": (".plan", ".engine", ".trt")}
_REQUIRED = ("format", "format_version", "engine", "what", "settings", "inputs", "outputs",
             "sha256", "size", "in_channels", "num_classes", "domains")


def input_spec(settings) -> dict[str, Any]:
    """The sidecar's ``"input"`` entry: what a translate engine takes (dtype, range, bits),
    checked by ``Engine.check_input`` before any work."""
    if settings.what == "translate" and settings.io == "uint16":
        return {"dtype": "uint16", "bits": 16, "range": [0, 65535]}
    return {"dtype": "float32", "range": [-1.0, 1.0]}


def sidecar_path(path: str | Path) -> Path:
    """``FILE.json`` for engine ``FILE`` (e.g. translator.onnx -> translator.onnx.json)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def engine_format_for(path: str | Path) -> str:
    """Engine format from the file suffix; MedShiftError for an unknown suffix."""
    suffix = Path(path).suffix.lower()
    for fmt, sfx in SUFFIXES.items():
        if suffix in sfx:
            return fmt
    known = ", ".join(s for v in SUFFIXES.values() for s in v)
    raise MedShiftError(f"engine file {path} has an unknown suffix {suffix!r}; expected one of "
                        f"{known}")


def write_sidecar(path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``FILE.json`` for engine ``path`` (adds format, versions and the file's SHA-256)."""
    import torch

    full = {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "medshift_fast_version": __version__,
        "torch_version": torch.__version__,
        "file": Path(path).name,
        "sha256": sha256_file(path),
        **meta,
    }
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True))
    tmp.replace(side)
    return side


def read_sidecar(path: str | Path, check_hash: bool = True) -> dict[str, Any]:
    """Read and validate the sidecar of engine ``path``.

    Raises:
        MedShiftError: the engine or its sidecar is missing, the sidecar is not valid JSON or not
            a medshift_fast engine description, its format version is not the one this
            medshift_fast reads, or the engine file does not match the recorded SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise MedShiftError(f"engine file {path} does not exist")
    side = sidecar_path(path)
    if not side.is_file():
        raise MedShiftError(f"engine {path} has no sidecar {side.name}; engines must be written "
                            "by `medshift export` (re-export it)")
    meta = read_format_json(side, ENGINE_FORMAT, "engine sidecar", "re-export the engine",
                            ENGINE_FORMAT_VERSION, "re-export it with `medshift export`",
                            f"engine {path}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise MedShiftError(f"engine sidecar {side} lacks {', '.join(missing)}; re-export it")
    if meta["engine"] not in FORMATS:
        raise MedShiftError(f"engine sidecar {side} names an unknown engine {meta['engine']!r}")
    if check_hash and sha256_file(path) != meta["sha256"]:
        raise MedShiftError(f"engine file {path} does not match the checksum in {side.name}: it is "
                            "corrupted or was replaced - re-export it")
    return meta
