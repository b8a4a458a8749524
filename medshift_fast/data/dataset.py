"""Folder-per-domain X-ray datasets: ROOT/<domain>/*.png|tif|tiff|dcm, optional ROOT/manifest.csv.

The domain of an image is its class label y (index into ``FolderDataset.domains``). A manifest
(columns ``path, domain, split, view_id, subject``; ``path`` relative to ROOT) fixes the file list,
splits and view ids; without one every non-hidden sub-folder of ROOT is a domain, files are found
recursively (by extension or content: ``io.find_images``; what is left out is logged once), and
``split`` is assigned by a stable hash of the relative path (70/15/15).

Domains without a manifest. A top-level folder whose images lie in two or more different
sub-folders (ROOT/Real/Low/*, ROOT/Real/High/*) is refused unless its name is one of
``DOMAINS`` (then the sub-folders are cases of that domain): one domain per top-level folder
would merge them silently. The error names the sub-folders and the ``domain_map``
(``--domain-map``) that splits them, or keeps them merged ("Real=Real"). A domain map reads only
the folders it names; a key that is not a folder (or, with a manifest, not a domain of it), or
two keys of which one contains the other, is refused.

Bad files. At construction every file's *header* is probed (fast: no pixel decode), which catches
non-image files, DICOMs without pixel data, header-level truncation and mixed bit depths within a
domain. Pixel-level damage (truncated data, NaN/Inf) shows only when decoding, in ``__getitem__``.
With ``skip_bad=False`` (default) both raise :class:`MedShiftError` naming the file. With
``skip_bad=True`` the file is logged and dropped at construction, or, when it fails in
``__getitem__``, logged, remembered as bad, and replaced by the next good image *of the same domain*
so that an epoch never crashes and the label distribution is unchanged; ``n_skipped`` counts both.
(With DataLoader worker processes, decode-time skips are counted in the workers' copies and only
logged; construction-time skips are always in ``n_skipped``.)
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInput, MedShiftError, offering, option, skip_note
from ._layout import check_map_keys, nested_error, report_skipped
from .io import find_images, probe_image, read_image

log = logging.getLogger("medshift_fast.data")
#: the options a dataset's messages may advise when no command declared its own flags
_OWN_OPTIONS = {"skip_bad": "skip_bad", "allow_mixed_depth": "allow_mixed_depth"}
_SKIP_REPORTED: set[str] = set()  # each skipped file is reported once per process

DOMAINS = ("synthetic_low", "synthetic_high", "real_low", "real_normal", "real_exposure")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: absolute path of the file.
        label: domain index y into ``FolderDataset.domains``.
        domain: domain name.
        split: "train" / "val" / "test" (or whatever the manifest says).
        view_id: id shared by the renderings of one view across domains (None if unknown).
        subject: subject / phantom id (None if unknown).
    """

    path: Path
    label: int
    domain: str
    split: str | None = None
    view_id: str | None = None
    subject: str | None = None


def hash_split(key: str, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> str:
    """Deterministic split ("train"/"val"/"test") from a stable hash of ``key``."""
    u = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
    acc = 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


def order_domains(names) -> tuple[str, ...]:
    """Known DOMAINS first (in their canonical order), then any others alphabetically."""
    names = set(names)
    return tuple(d for d in DOMAINS if d in names) + tuple(sorted(names - set(DOMAINS)))


def parse_domain_map(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """Parse ``"FolderA=real_low,FolderB=real_normal"`` (or pass a dict through)."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec) if spec is not None else None
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise MedShiftError(
                f"bad domain map entry {item!r}: use FOLDER=DOMAIN pairs separated by commas"
            )
        k, v = (s.strip() for s in item.split("=", 1))
        out[k] = v
    return out


def fit_square(img: torch.Tensor, size: int, resize: str = "crop") -> torch.Tensor:
    """Resize keeping the aspect ratio, then centre-crop or pad (with -1) to size x size.

    Args:
        img: (H, W) or (1, H, W) float tensor in [-1, 1].
        size: output side S.
        resize: "crop" (short side -> S, crop the long side) or "pad" (long side -> S, pad).

    Returns:
        (1, S, S) float32 tensor.
    """
    x = img.reshape(1, 1, *img.shape[-2:]).float()
    h, w = x.shape[-2:]
    if resize not in ("crop", "pad"):
        raise MedShiftError(f"unknown resize policy {resize!r}: use 'crop' or 'pad'")
    if (h, w) != (size, size):
        scale = size / (min(h, w) if resize == "crop" else max(h, w))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if resize == "crop":
            nh, nw = max(nh, size), max(nw, size)
        else:
            nh, nw = min(nh, size), min(nw, size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)
        if resize == "crop":
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top:top + size, left:left + size]
        else:
            pt, pl = (size - nh) // 2, (size - nw) // 2
            x = F.pad(x, (pl, size - nw - pl, pt, size - nh - pt), value=-1.0)
    return x.reshape(1, size, size).clamp_(-1.0, 1.0).contiguous()


class FolderDataset(torch.utils.data.Dataset):
    """Multi-domain X-ray images; ``ds[i] -> (image (1, S, S) float32 in [-1, 1], label int)``.

    Args:
        root: dataset folder (ROOT/<domain>/... and optionally ROOT/manifest.csv).
        size: output side S (keep aspect, then crop/pad); None returns native size (1, H, W).
        split: a split name or a sequence of them (None: all images).
        domains: domain names to use, in label order (None: all found, DOMAINS order first).
        domain_map: {folder or manifest domain name: domain name}, e.g. for the X-DigiSkull
            release. Without a manifest only the mapped folders are read (keys may be nested
            paths such as "Real/Low"; each must exist, none inside another); with one, every
            key must be a domain of the manifest.
        skip_bad: log and skip unreadable files instead of raising (see module docstring).
        resize: "crop" or "pad".
        validate: probe every file header at construction (recommended; cheap).
        allow_mixed_depth: accept 8- and 16-bit files within one domain.
        cache: keep decoded (resized) images in memory after the first read.
    """

    def __init__(self, root, size: int | None = None, split=None, domains=None, domain_map=None,
                 skip_bad: bool = False, resize: str = "crop", validate: bool = True,
                 allow_mixed_depth: bool = False, cache: bool = False):
        self.root = Path(root)
        self.size = None if size is None else int(size)
        self.resize = resize
        self.skip_bad = bool(skip_bad)
        self.n_skipped = 0
        self.bad_files: list[str] = []
        self._bad_idx: set[int] = set()
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        if resize not in ("crop", "pad"):
            raise MedShiftError(f"unknown resize policy {resize!r}: use 'crop' or 'pad'")
        if self.size is not None and self.size < 1:
            raise MedShiftError(f"image size must be positive, got {size}")
        if not self.root.is_dir():
            raise MedShiftError(f"data folder {str(self.root)!r} does not exist or is not a "
                                "folder; point --data at ROOT/<domain>/*.png "
                                "(or run `medshift simulate`)")
        dmap = parse_domain_map(domain_map) or {}
        if isinstance(domains, str):
            domains = tuple(d.strip() for d in domains.split(",") if d.strip())
        self.skipped_files: list[tuple[Path, str]] = []
        # list of (path, domain, split, view_id, subject)
        recs = self._scan(dmap, None if domains is None else set(domains))
        available = order_domains({r[1] for r in recs})
        if domains is None:
            self.domains = available
        else:
            domains = tuple(domains)
            unknown = [d for d in domains if d not in available]
            if unknown:
                raise MedShiftError(f"unknown domain(s) {', '.join(unknown)} in "
                                    f"{str(self.root)!r}; available: "
                                    f"{', '.join(available) or '(none)'}")
            if len(set(domains)) != len(domains):
                raise MedShiftError(f"domains listed twice: {', '.join(domains)}")
            self.domains = domains
        if split is not None:
            splits = {split} if isinstance(split, str) else set(split)
            recs = [r for r in recs if r[2] in splits]
        lab = {d: i for i, d in enumerate(self.domains)}
        samples = [Sample(p, lab[d], d, s, v, subj) for p, d, s, v, subj in recs if d in lab]
        if validate:
            with offering(_OWN_OPTIONS):
                samples = self._validate(samples, allow_mixed_depth)
        counts = Counter(s.domain for s in samples)
        empty = [d for d in self.domains if counts[d] == 0]
        if empty:
            where = f" in split {split!r}" if split is not None else ""
            raise MedShiftError(f"no usable images for domain(s) {', '.join(empty)}{where} "
                                f"under {str(self.root)!r}; add images or leave the domain out "
                                "(--domains)")
        report_skipped(self.root, self.skipped_files)  # once the dataset stands (no 2nd line)
        self.samples = samples
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        self._by_label = {i: [j for j, s in enumerate(samples) if s.label == i]
                          for i in range(len(self.domains))}

    # --- discovery -------------------------------------------------------------------------
    def _scan(self, dmap: dict[str, str], wanted: set[str] | None):
        man = self.root / MANIFEST
        if man.is_file():
            return self._read_manifest(man, dmap)
        if dmap:
            dmap = check_map_keys(self.root, dmap)
            folders = list(dmap)
        else:
            folders = sorted(p.name for p in self.root.iterdir()
                             if p.is_dir() and not p.name.startswith((".", "_")))
        if not folders:
            raise MedShiftError(f"no domain folders in {str(self.root)!r}; expected "
                                "ROOT/<domain>/*.png|tif|dcm (e.g. from `medshift simulate`)")
        recs, nested = [], {}
        for folder in folders:
            fpath = self.root / folder
            files, skipped = find_images(fpath)
            self.skipped_files += skipped
            if not files:
                left = (f"; {len(skipped)} other file(s) left out, e.g. "
                        f"{skipped[0][0].name}: {skipped[0][1]}" if skipped else "")
                raise MedShiftError(f"domain folder {str(fpath)!r} contains no images (PNG, "
                                    f"TIFF or DICOM, by extension or content{left}); add images "
                                    "or remove the folder")
            dom = dmap.get(folder, folder)
            groups = sorted({p.relative_to(fpath).parts[0] if len(p.relative_to(fpath).parts) > 1
                             else "" for p in files})
            if (not dmap and len(groups) > 1 and folder not in DOMAINS
                    and (wanted is None or dom in wanted)):
                nested[folder] = groups
            for p in files:
                rel = p.relative_to(self.root).as_posix()
                recs.append((p, dom, hash_split(rel), None, None))
        if nested:
            raise nested_error(self.root, folders, nested)
        return recs

    def _read_manifest(self, man: Path, dmap: dict[str, str]):
        try:
            with open(man, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MedShiftError(f"cannot read manifest {str(man)!r}: {exc}") from None
        if not rows or "path" not in rows[0]:
            raise MedShiftError(f"manifest {str(man)!r} is empty or has no 'path' column; "
                                "expected columns path,domain,split,view_id,subject")
        recs, seen = [], set()
        for n, row in enumerate(rows, start=2):
            rel = (row.get("path") or "").strip()
            if not rel:
                raise MedShiftError(f"manifest {str(man)!r} line {n}: empty path")
            dom = (row.get("domain") or "").strip() or Path(rel).parts[0]
            seen.add(dom)
            dom = dmap.get(dom, dom)
            split = (row.get("split") or "").strip() or hash_split(rel)
            recs.append((self.root / rel, dom, split, (row.get("view_id") or "").strip() or None,
                         (row.get("subject") or "").strip() or None))
        unknown = [k for k in dmap if k not in seen]
        if unknown:
            raise MedShiftError(f"--domain-map key(s) {', '.join(map(repr, unknown))} match no "
                                f"domain of {str(man)!r} (its domains: "
                                f"{', '.join(order_domains(seen))}); with a manifest the keys "
                                "are its domain names - fix the map")
        return recs

    def _bad(self, path, exc: MedShiftError) -> None:
        """Raise ``exc``, or (skip_bad) report the file once, without the remedy, and count it."""
        if not self.skip_bad:
            raise exc
        if str(path) not in _SKIP_REPORTED:
            _SKIP_REPORTED.add(str(path))
            log.warning("skipping bad file %s", skip_note(exc))
        self.n_skipped += 1
        self.bad_files.append(str(path))

    def _validate(self, samples: list[Sample], allow_mixed_depth: bool) -> list[Sample]:
        good, info = [], {}
        for s in samples:
            try:
                info[s.path] = probe_image(s.path)
                good.append(s)
            except MedShiftError as exc:
                self._bad(s.path, exc)
        if allow_mixed_depth:
            return good
        out = []
        for dom in self.domains:
            members = [s for s in good if s.domain == dom]
            depths = Counter(info[s.path].depth for s in members)
            if len(depths) <= 1:
                out.extend(members)
                continue
            d0 = depths.most_common(1)[0][0]
            for s in members:
                fmt, d = info[s.path].format, info[s.path].depth
                if d == d0:
                    out.append(s)
                else:
                    what = f"is {fmt} {d}-bit but most files are {d0}-bit"
                    opts = [o for o in (option("allow_mixed_depth"), option("skip_bad")) if o]
                    self._bad(s.path, BadInput(
                        f"mixed bit depths in domain {dom!r}: {str(s.path)!r} {what}; convert "
                        "them to one depth" + (f", or pass {' or '.join(opts)}" if opts else ""),
                        s.path, f"mixed bit depths in domain {dom!r}: it {what}"))
        keep = set(map(id, out))
        return [s for s in samples if id(s) in keep]

    # --- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        """Decode sample i to a (1, S, S) (or native (1, H, W)) float32 tensor; may raise."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        with offering(_OWN_OPTIONS):
            img = torch.from_numpy(read_image(self.samples[i].path))
        x = img.unsqueeze(0) if self.size is None else fit_square(img, self.size, self.resize)
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        label = self.samples[i].label
        if i in self._bad_idx:
            i = self._substitute(i)
        while True:
            try:
                return self.load(i), label
            except MedShiftError as exc:
                self._bad(self.samples[i].path, exc)
                self._bad_idx.add(i)
                i = self._substitute(i)

    def _substitute(self, i: int) -> int:
        pool = self._by_label[self.samples[i].label]
        k = pool.index(i)
        for j in pool[k + 1:] + pool[:k]:
            if j not in self._bad_idx:
                return j
        raise MedShiftError(f"every image of domain {self.samples[i].domain!r} failed to decode "
                            f"(last: {str(self.samples[i].path)!r}); check the data folder")

    def counts(self) -> dict[str, int]:
        """Number of images per domain, in label order."""
        c = Counter(s.domain for s in self.samples)
        return {d: c[d] for d in self.domains}

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images stacked: (N, 1, S, S) float32 and labels (N,) long (needs ``size``)."""
        if self.size is None:
            raise MedShiftError("to_tensors needs a fixed image size; pass size=...")
        xs, ys = zip(*(self[i] for i in range(len(self)))) if len(self) else ((), ())
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)

    def __repr__(self) -> str:
        c = ", ".join(f"{d}={n}" for d, n in self.counts().items())
        return f"FolderDataset({str(self.root)!r}, size={self.size}, n={len(self)}: {c})"


def load_split(root, split: str | None = "train", size: int | None = 64, **kwargs) -> FolderDataset:
    """Shorthand for ``FolderDataset(root, size=size, split=split, **kwargs)``."""
    return FolderDataset(root, size=size, split=split, **kwargs)


def images_to_array(ds: FolderDataset) -> np.ndarray:
    """All images of a fixed-size dataset as a float32 array (N, S, S)."""
    return ds.to_tensors()[0][:, 0].numpy()
