"""Per-view ground truth ("labels") for downstream tasks: written by the simulator, or brought
by a user, and read (vetted) by the utility benchmark (``eval/utility``).

**Simulator labels.** ``medshift simulate`` writes one file per view, ``OUT/labels/<view_id>.tif``,
computed from the phantom's two material line integrals (the same ones every domain of the view
is rendered from), so one label file is exact for all five renderings of the view, for their
translations, and pixel-aligned with each (same size and grid). A float32 planar TIFF of shape
(3, S, S), zlib-compressed; its ImageDescription is JSON naming the channels and units:

* ``bone_mm``: the line integral of cortical bone (ICRU-44, 1.92 g/cm^3) along the ray of the
  detector pixel, in mm of bone at that density, averaged over the pixel's area (the detector
  integrates its sub-pixels): the bone half of a two-material decomposition.
* ``soft_mm``: the same for soft tissue (water, 1.0 g/cm^3), in mm.
* ``bone_mask``: 1 where ``bone_mm >= BONE_MASK_MM`` (any bone on the ray), else 0.

manifest.csv lists the file in a ``labels`` column (the same path for every domain of a view).

**A user's labels.** ``ROOT/labels/<image path relative to ROOT, without its extension>.<ext>``
(for ``ROOT/<domain>/<name>.png``: ``ROOT/labels/<domain>/<name>.tif``), or a ``labels`` column
in ROOT/manifest.csv. Two kinds:

* ``map``: float values in physical units (float TIFF, float .npy); a multi-channel file of the
  simulator's kind gives the channel asked for by name.
* ``mask``: binary, 0 = background (PNG or integer TIFF/.npy with two values at most: 0 and one
  foreground value; a ``bone_mask`` channel).

:func:`resolve` finds and vets every label of a set of images before any work: one label per
image, no label file without an image, the image's size, the kind the task needs, finite
values; each failure is one :class:`MedShiftError` naming the file and what to do.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MedShiftError

LABELS_DIR = "labels"  # ROOT/labels: never a domain folder
MANIFEST_COLUMN = "labels"
CHANNELS = ("bone_mm", "soft_mm", "bone_mask")
UNITS = {"bone_mm": "mm of cortical bone (ICRU-44, 1.92 g/cm^3) along the ray",
         "soft_mm": "mm of soft tissue (water, 1.0 g/cm^3) along the ray",
         "bone_mask": "1 = bone_mm >= BONE_MASK_MM, 0 = no bone"}
BONE_MASK_MM = 1.0
KINDS = {"bone_mm": "map", "soft_mm": "map", "bone_mask": "mask"}
SUFFIXES = (".tif", ".tiff", ".png", ".npy")
_MARK = "medshift_labels"


def simulator_labels(L_ss, ss: int) -> np.ndarray:
    """The label channels of one view from its supersampled line integrals.

    Args:
        L_ss: (ss*S, ss*S, 2) tensor or array, [L_soft, L_bone] in mm (``projector``).
        ss: supersampling factor (sub-pixels per detector pixel side).

    Returns:
        (3, S, S) float32: ``CHANNELS`` (bone_mm, soft_mm, bone_mask).
    """
    import torch

    from .physics import area_pool

    L = torch.as_tensor(L_ss, dtype=torch.float64)
    pooled = area_pool(L.permute(2, 0, 1).contiguous(), ss)  # (2, S, S): soft, bone
    bone, soft = pooled[1], pooled[0]
    mask = (bone >= BONE_MASK_MM).to(torch.float64)
    return torch.stack([bone, soft, mask]).float().numpy()


def write_labels(path, labels: np.ndarray, view_id: str) -> None:
    """Write a (3, S, S) float32 label stack as a planar TIFF with its channel names (atomic)."""
    import tifffile

    from ..fileio import atomic_write

    a = np.ascontiguousarray(labels, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] != len(CHANNELS):
        raise MedShiftError(f"labels must be ({len(CHANNELS)}, H, W), got {a.shape}")
    desc = json.dumps({_MARK: 1, "channels": list(CHANNELS),
                       "units": [UNITS[c] for c in CHANNELS], "bone_mask_mm": BONE_MASK_MM,
                       "view_id": view_id})
    atomic_write(path, lambda tmp: tifffile.imwrite(
        tmp, a, photometric="minisblack", planarconfig="separate", compression="zlib",
        description=desc, metadata=None))


@dataclass(frozen=True)
class Label:
    """One decoded label.

    Attributes:
        values: (H, W) float32 (a mask holds 0.0 / 1.0).
        kind: "map" or "mask".
        path: the file.
    """

    values: np.ndarray
    kind: str
    path: Path


def _bad(path, what: str, fix: str) -> MedShiftError:
    return MedShiftError(f"label file {str(path)!r}: {what}; {fix}")


def read_label(path, channel: str) -> Label:
    """Decode one label file and pick ``channel`` (multi-channel simulator files), vetting it.

    Raises:
        MedShiftError: unreadable, not 2-D, colour, NaN/Inf, a multi-channel file without the
            channel, a mask with more than two values.
    """
    path = Path(path)
    suf = path.suffix.lower()
    names: list[str] | None = None
    try:
        if suf == ".npy":
            a = np.load(path, allow_pickle=False)
        elif suf in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                a = tf.asarray()
                desc = tf.pages[0].description or ""
            if desc.startswith("{") and _MARK in desc:
                names = list(json.loads(desc).get("channels", []))
        elif suf == ".png":
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("1", "L", "I", "I;16", "I;16B", "P"):
                    raise _bad(path, f"a {im.mode} PNG", "save masks as greyscale PNG")
                a = np.asarray(im.convert("L") if im.mode in ("1", "P") else im)
        else:
            raise _bad(path, f"unsupported extension {suf!r}",
                       f"use one of {', '.join(SUFFIXES)}")
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise _bad(path, f"cannot be read ({type(exc).__name__}: {exc})",
                   "replace it with a readable TIFF, PNG or .npy") from None
    a = np.asarray(a)
    if a.ndim == 3 and names is not None:
        if channel not in names or a.shape[0] != len(names):
            raise _bad(path, f"has channels {', '.join(names)}, not {channel!r}",
                       f"choose one of them (--label {names[0]})")
        a = a[names.index(channel)]
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise _bad(path, f"shape {a.shape} is not a single-channel 2-D label",
                   "store one channel per file (or the simulator's named channels)")
    if a.dtype.kind not in "biuf":
        raise _bad(path, f"dtype {a.dtype} is not numeric", "store numbers")
    kind = KINDS.get(channel, "map") if names is not None else (
        "map" if a.dtype.kind == "f" else "mask")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise _bad(path, "contains NaN or Inf", "fix the label")
    if kind == "mask":
        vals = np.unique(a)
        if vals.size > 2 or vals[0] < 0 or (vals.size == 2 and vals[0] != 0):
            raise _bad(path, f"an integer label with values {vals[:4].tolist()}"
                       f"{' ...' if vals.size > 4 else ''} is not a mask (0 = background, one "
                       "foreground value)", "store float maps as float TIFF/.npy, masks with "
                       "two values")
        a = (a > 0).astype(np.float32)
    return Label(a, kind, path)


_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom")


def manifest_labels(root) -> dict[str, str]:
    """{image path: label path} (relative to ROOT) from the manifest's ``labels`` column."""
    man = Path(root) / "manifest.csv"
    if not man.is_file():
        return {}
    with open(man, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["path"].strip(): r[MANIFEST_COLUMN].strip() for r in rows
            if (r.get(MANIFEST_COLUMN) or "").strip() and (r.get("path") or "").strip()}


def _stem(rel: str, suffixes=_IMAGE_SUFFIXES) -> str:
    """A relative path without its extension among ``suffixes`` (other names kept whole:
    extensionless DICOMs, names such as 1.2.840.5)."""
    low = rel.lower()
    for suf in suffixes:
        if low.endswith(suf):
            return rel[: -len(suf)]
    return rel


def label_path(root, image, listed: dict[str, str]) -> Path | None:
    """The label file of ``image`` (the manifest's entry, else the mirrored path), or None."""
    root = Path(root)
    rel = Path(image).relative_to(root).as_posix()
    if rel in listed:
        p = root / listed[rel]
        return p if p.is_file() else None
    base = root / LABELS_DIR / _stem(rel)
    for suf in SUFFIXES:
        p = Path(str(base) + suf)
        if p.is_file():
            return p
    return None


def _orphans(root: Path, images, listed: dict[str, str]) -> list[Path]:
    """Label files under ROOT/labels/<folder> (the images' top folders) matching no image."""
    if listed:
        return []
    known = {_stem(Path(p).relative_to(root).as_posix()) for p in images}
    tops = {Path(p).relative_to(root).parts[0] for p in images}
    out = []
    for top in sorted(tops):
        folder = root / LABELS_DIR / top
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and \
                        _stem(f.relative_to(root / LABELS_DIR).as_posix(), SUFFIXES) not in known:
                    out.append(f)
    return out


def load_labels(root, images, shapes, *, channel: str, kind: str, what: str,
                all_images=None) -> np.ndarray:
    """Find, decode and vet the label of every image; (N, H, W) float32.

    Args:
        root: dataset root.
        images: image paths (under ``root``), one label each.
        shapes: (H, W) of each image (the label must have it).
        channel: the channel of multi-channel (simulator) files, e.g. "bone_mm".
        kind: "map" (regression) or "mask" (segmentation): what the task needs.
        what: the images in words, for the messages ("real_normal test").
        all_images: every image of the domain(s) (all splits): a label file under
            ROOT/labels that matches none of them is refused (a misnamed label).

    Raises:
        MedShiftError: no labels at all, some missing, a label matching no image, a size that
            is not the image's, the wrong kind, an unreadable or non-finite file.
    """
    root = Path(root)
    listed = manifest_labels(root)
    paths = [label_path(root, p, listed) for p in images]
    missing = [p for p, lp in zip(images, paths) if lp is None]
    rels = [Path(p).relative_to(root).as_posix() for p in images]
    if len(missing) == len(paths) and not any(r in listed for r in rels):
        raise MedShiftError(
            f"no labels found for the {len(paths)} {what} images under {str(root)!r}: expected "
            f"{LABELS_DIR}/<domain>/<name>{{{','.join(SUFFIXES)}}} beside <domain>/<name> (or a "
            f"'{MANIFEST_COLUMN}' column in manifest.csv); `medshift simulate` writes them")
    if missing:
        ex = Path(missing[0]).relative_to(root).as_posix()
        where = (f"manifest.csv lists {listed[ex]!r}, which does not exist" if ex in listed
                 else f"expected {LABELS_DIR}/{_stem(ex)}.tif|.png|.npy")
        raise MedShiftError(
            f"the label folder does not match the images: labels for {len(paths) - len(missing)}"
            f" of {len(paths)} {what} images; none for e.g. {ex!r} ({where}); every image "
            "needs one")
    orphans = _orphans(root, all_images if all_images is not None else images, listed)
    if orphans:
        raise MedShiftError(
            f"the label folder does not match the images: {len(orphans)} label file(s) match no "
            f"image, e.g. {orphans[0].relative_to(root).as_posix()!r}; name each label after "
            f"its image ({LABELS_DIR}/<domain>/<image name without extension>.<ext>)")
    out = []
    for lp, shape in zip(paths, shapes):
        lab = read_label(lp, channel)
        if lab.kind != kind:
            need = ("a float map in physical units (float TIFF or .npy)" if kind == "map"
                    else "a mask (0 = background; PNG or integer TIFF/.npy)")
            raise _bad(lp, f"is a {lab.kind} but the task needs {need}",
                       "give labels of that kind or choose the task that fits them (--task)")
        if tuple(lab.values.shape) != tuple(shape):
            raise _bad(lp, f"is {lab.values.shape[0]}x{lab.values.shape[1]} but its image is "
                       f"{shape[0]}x{shape[1]}", "labels must have their image's size and grid")
        out.append(lab.values)
    return np.stack(out)
