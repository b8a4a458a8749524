"""How a dataset folder without a manifest is read as domains: the rules ``FolderDataset``
applies (nested trees, domain-map keys) and the report of the files it leaves out."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import MedShiftError

log = logging.getLogger("medshift_fast.data")

__all__ = ["check_map_keys", "nested_error", "report_skipped"]

_REPORTED: set[str] = set()  # files already reported as left out (once per process)


def report_skipped(root: Path, skipped: list[tuple[Path, str]]) -> None:
    new = [(p, why) for p, why in skipped if str(p) not in _REPORTED]
    if not new:
        return
    _REPORTED.update(str(p) for p, _ in new)
    shown = "; ".join(f"{p.relative_to(root).as_posix()}: {why}" for p, why in new[:5])
    more = f"; and {len(new) - 5} more" if len(new) > 5 else ""
    log.warning("left out %d file(s) under %s that are not images: %s%s", len(new), root, shown,
                more)


def _slug(key: str) -> str:
    return "_".join(filter(None, "".join(c.lower() if c.isalnum() else " " for c in key).split()))


def nested_error(root: Path, folders: list[str], nested: dict[str, list[str]]) -> MedShiftError:
    """The one-line refusal of a nested tree without a domain map."""
    desc = []
    for f, groups in nested.items():
        shown = [f"{f}/{g}" if g else f"{f}/ (files directly in it)" for g in groups]
        more = f", ... ({len(shown)} in all)" if len(shown) > 6 else ""
        desc.append(f"the images of {f!r} are in {', '.join(shown[:6])}{more}")
    split = []
    for f in folders:
        subs = [g for g in nested.get(f, []) if g]
        split += [f"{f}/{g}={_slug(f + '/' + g)}" for g in subs] if subs else [f"{f}={f}"]
    if len(split) > 8:
        split = split[:8] + ["..."]
    merge = ",".join(f"{f}={f}" for f in folders)
    return MedShiftError(
        f"{str(root)!r} is a nested tree: {'; '.join(desc)}; one domain per top-level folder "
        "would merge them. Say which folder is which domain: --domain-map "
        f"'{','.join(split)}' (domain_map=...; only the folders named are read), or "
        f"--domain-map '{merge}' to keep one domain per top-level folder")


def check_map_keys(root: Path, dmap: dict[str, str]) -> dict[str, str]:
    """Normalised {folder key: domain}: every key an existing folder under root, none inside
    another."""
    out: dict[str, str] = {}
    for key, dom in dmap.items():
        k = key.strip().strip("/")
        parts = Path(k).parts
        if not k or Path(k).is_absolute() or ".." in parts or "." in parts:
            raise MedShiftError(f"--domain-map key {key!r} is not a folder path under "
                                f"{str(root)!r}; use paths such as Real/Low")
        fpath = root / k
        if not fpath.is_dir():
            parent = fpath.parent
            while not parent.is_dir() and parent != root:
                parent = parent.parent
            there = sorted(q.name for q in parent.iterdir()
                           if q.is_dir() and not q.name.startswith("."))
            raise MedShiftError(f"domain folder {str(fpath)!r} (from the domain map key {key!r}) "
                                f"does not exist; folders in {str(parent)!r}: "
                                f"{', '.join(there) or '(none)'}; fix the map or the data "
                                "folder")
        if not dom:
            raise MedShiftError(f"--domain-map key {key!r} maps to an empty domain name")
        out[k] = dom
    keys = sorted(out, key=lambda k: Path(k).parts)
    for a in keys:
        for b in keys:
            if a != b and Path(b).parts[:len(Path(a).parts)] == Path(a).parts:
                raise MedShiftError(f"--domain-map keys {a!r} and {b!r} overlap (the images of "
                                    f"{b!r} would be read twice); map either the folder or its "
                                    "sub-folders")
    return out
