"""Atomic file writes that honour the process umask: every file the package writes goes here.

``atomic_write(path, write_fn)`` writes to a temporary file in the destination folder, fsyncs it,
gives it the mode a plain ``open(path, "w")`` would have (0666 minus the umask; ``mkstemp``
alone leaves 0600) and renames it into place, so a crash mid-write never leaves a half-written
file and never loses the previous version. ``exclusive=True`` refuses to replace an existing
file (the rename is then a hard link, which fails atomically when the name is taken).

The output-safety rule every writing command follows (docs/data.md, "Output safety"): never
replace a file it did not write in this run unless ``--overwrite``; never write onto (or into)
an input (:func:`check_not_inside`); never read its own outputs back as inputs. A command that
writes a whole folder of its own (``demo``, ``simulate``) checks it with
:func:`check_output_folder` before any work: a new or empty folder is used, a previous output of
the same command is replaced only with ``--overwrite``, and any other non-empty folder is refused
(even with ``--overwrite``: its files would be replaced or mixed with the command's).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import MedShiftError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "file_mode",
           "check_not_inside", "check_output_folder", "check_writable_dir", "folder_entries",
           "is_within"]


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import (single-threaded), so that
    # threads writing files later never race on it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def file_mode() -> int:
    """The permission bits of a new regular file under the current umask (0666 & ~umask)."""
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None],
                 exclusive: bool = False) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp_path)``, fsync, chmod to the umask, rename.

    Args:
        path: destination file (its parent folders are created).
        write_fn: writes the whole content to the temporary path it is given.
        exclusive: refuse (MedShiftError) when ``path`` already exists, atomically.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise MedShiftError(f"{path} already exists; it is not overwritten (remove it or "
                                    "pass --overwrite)") from None
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, exclusive: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (``atomic_write``)."""
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, w, exclusive)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_write``)."""
    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, w, exclusive)


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written into it, before any work.

    Raises:
        MedShiftError: it is a file, or cannot be created or written to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MedShiftError(f"{what} {str(path)!r} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medshift-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedShiftError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc}); "
                            "pick a folder you can write to") from None
    return path


def load_safetensors(path: str | os.PathLike, what: str = "checkpoint weights"):
    """(tensors, metadata) of a safetensors file; MedShiftError when missing or damaged."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MedShiftError(f"{what} {path} are missing; the run directory is incomplete - use "
                            "another checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MedShiftError(f"{what} {path} are corrupt or tampered ({exc}); use another "
                            "checkpoint") from exc
    return tensors, meta


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> Path:
    """Write CPU-contiguous copies of ``tensors`` atomically as safetensors with ``metadata``."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(sd, p, metadata=metadata))


def atomic_dir(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write a whole folder atomically: ``write_fn(tmp_dir)``, then swap it into ``path``.

    An existing ``path`` is first renamed to ``<name>.old`` and removed afterwards, so a crash
    at any point leaves either the old or the new complete folder (``<name>.old`` at worst).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old")
    try:
        tmp.mkdir()
        write_fn(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_format_json(path: str | os.PathLike, fmt: str, what: str, fix: str,
                     version: int | None = None, version_fix: str | None = None,
                     name: str | os.PathLike | None = None) -> dict:
    """A JSON file this package wrote, checked: valid JSON, an object whose ``format`` is
    ``fmt`` and (when ``version`` is given) whose ``format_version`` is ``version``.

    Args:
        path: the JSON file.
        fmt: the expected ``format`` value.
        what: what the file is, for messages ("checkpoint config", "engine sidecar").
        fix: what the user should do about a damaged or foreign file.
        version: the format version this code reads (None: not checked).
        version_fix: what to do about another version (default: ``fix``).
        name: what to name in the version message (default: ``path``).

    Raises:
        MedShiftError: one line naming the file, what is wrong and ``fix``.
    """
    import json

    from . import __version__

    try:
        d = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedShiftError(f"{what} {path} is not valid JSON ({exc}); it is damaged - "
                            f"{fix}") from exc
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise MedShiftError(f"{path} is not a {fmt} {what}; {fix}")
    if version is not None and d.get("format_version") != version:
        raise MedShiftError(
            f"{name or path} has format version {d.get('format_version')} (written by "
            f"medshift_fast {d.get('medshift_fast_version', '?')}), this medshift_fast "
            f"({__version__}) reads version {version}; {version_fix or fix}")
    return d


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# --- the output-safety rule ------------------------------------------------------------------
def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved: symlinks, ``..``)."""
    try:
        a, b = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError):
        return False
    return a == b or b in a.parents


def check_not_inside(out: str | os.PathLike, inputs: Iterable, *, out_flag: str = "--out",
                     command: str = "") -> None:
    """Refuse an output path that is one of ``inputs`` or lies inside an input folder.

    Args:
        out: the output file or folder.
        inputs: ``(flag, path)`` pairs (or bare paths) the command reads; None entries are
            ignored.
        out_flag: the output's flag, for the message.
        command: the command's name, prefixed to the message.

    Raises:
        MedShiftError: naming both paths: the command would write onto its input (and, for a
            folder, read its own outputs back as inputs the next time).
    """
    pre = f"{command}: " if command else ""
    for item in inputs:
        flag, path = item if isinstance(item, tuple) else ("the input", item)
        if path is None or str(path) == "":
            continue
        if is_within(out, path):
            same = Path(out).resolve() == Path(path).resolve()
            where = "is" if same else "lies inside"
            raise MedShiftError(f"{pre}{out_flag} {str(out)!r} {where} {flag} {str(path)!r}: "
                                "the outputs would be written into the input (and read back as "
                                f"inputs next time); choose an {out_flag} outside it")


def _ours_tmp(name: str) -> bool:
    """Temporary names this package writes (atomic_write, check_writable_dir, atomic_dir)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".medshift")
                                     or ".tmp-" in name)


def folder_entries(path: str | os.PathLike) -> list[str]:
    """Sorted names in ``path`` (none if it does not exist), without this package's temporaries."""
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(e.name for e in p.iterdir() if not _ours_tmp(e.name))


def check_output_folder(out: str | os.PathLike, *, command: str,
                        is_previous: Callable[[Path], bool], overwrite: bool,
                        out_flag: str = "--out") -> bool:
    """The output-safety rule for a command that writes a whole folder of its own, before work.

    Args:
        out: the output folder.
        command: the command's name ("demo", "simulate"), for the messages.
        is_previous: whether a non-empty ``out`` holds a previous output of this command and
            nothing else the command would replace or mix with (the caller's definition).
        overwrite: the user passed ``--overwrite``.
        out_flag: the output's flag, for the messages.

    Returns:
        True when ``out`` holds a previous output to be replaced (``overwrite`` given: the
        caller removes what that run wrote before writing); False for a new or empty folder.

    Raises:
        MedShiftError: ``out`` is a file; holds a previous output and ``overwrite`` is False;
            or is not empty and not a previous output (refused even with ``overwrite``).
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise MedShiftError(f"{command}: {out_flag} {str(p)!r} exists and is not a folder; pass a "
                            "folder path")
    names = folder_entries(p)
    if not names:
        return False
    if not is_previous(p):
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
        raise MedShiftError(f"{command}: {out_flag} {str(p)!r} is not empty ({shown}) and does "
                            f"not hold a previous `medshift {command}` output; {command} writes "
                            "only into a new or empty folder or over its own previous output "
                            "(never mixed into other files, even with --overwrite) - choose "
                            f"another {out_flag}")
    if not overwrite:
        raise MedShiftError(f"{command}: {out_flag} {str(p)!r} already holds a previous "
                            f"`medshift {command}` output; pass --overwrite to replace it, or "
                            f"choose another {out_flag}")
    return True
