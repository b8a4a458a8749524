"""Vetting the inputs of ``medshift translate`` before the first translation (translate/files.py).

Every input is vetted by ONE function, :func:`vet_input`: its header (format, bit depth,
modality, frames, colour, PNG CRCs, a missing DICOM decoder), its size, the working grid and
scale (the scale decision, ``checks.check_scale``: beyond 4x from the learned scale only an
explicit ``--size`` translates), the memory plan, its output name, and then its pixels (decoded
once: NaN / Inf, corrupt compressed data, the intensity rule of ``translate.intensity``). A
refused input therefore stops the command before anything is written (or, with
``--skip-bad``, is listed as skipped), never half-way through a folder. Per-image checks that
decide how an image is translated add their findings to :attr:`Planned.per_image`, which
becomes columns of the run's manifest (the intensity verdict: ``intensity``), and keep what
the translation needs (the verdict's ``apply`` / ``restore``: :attr:`Planned.verdict`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.geometry import Fit, plan_fit
from ..data.io import find_images, probe_image, read_image
from ..data.writers import output_suffix
from ..errors import MedShiftError, option
from .checks import check_scale

__all__ = ["Planned", "collect", "vet_all", "vet_input"]

SAY_AFTER = 3.0  # seconds of vetting after which a line says what is going on


@dataclass
class Planned:
    """One vetted input and what will be done with it.

    Attributes:
        path: the input file.
        rel: its path relative to the input folder it was found in (its own name for a file).
        dst: the output path.
        fit: the geometry from the input's grid to the working grid and back.
        note: the working size and scale, for the metadata and the manifest.
        warning: a one-line warning about how it will be translated (the scale, the
            intensities), or None.
        per_image: extra manifest columns of this input (name: value).
        verdict: the intensity rule's ``intensity.Verdict`` (None when the pixels were not
            vetted: an output a resumed run keeps).
        kept: a resumed run keeps the output an interrupted run wrote (verified).
    """

    path: Path
    rel: Path
    dst: Path
    fit: Fit
    note: str
    warning: str | None = None
    per_image: dict[str, Any] = field(default_factory=dict)
    verdict: Any = None
    kept: bool = False


def collect(inputs) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """[(file, its path relative to its input folder)] in a stable order, and the files of
    input folders left out (not images), with why."""
    files: list[tuple[Path, Path]] = []
    left: list[tuple[Path, str]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found, skipped = find_images(p)
            if not found:
                why = f" ({len(skipped)} other file(s), e.g. {skipped[0][0].name}: " \
                      f"{skipped[0][1]})" if skipped else ""
                raise MedShiftError(f"input folder {s!r} contains no images (PNG, TIFF or "
                                    f"DICOM, by extension or content){why}")
            files += [(f, f.relative_to(p)) for f in found]
            left += skipped
        elif p.is_file():
            files.append((p, Path(p.name)))
        else:
            raise MedShiftError(f"input {s!r} does not exist")
    return files, left


def _suffix(cfg, info, f: Path) -> str:
    if cfg.out_format != "same":
        return output_suffix(cfg.out_format, None)
    return {"png": ".png", "tiff": Path(f).suffix if Path(f).suffix.lower() in (".tif", ".tiff")
            else ".tif", "dicom": ".dcm"}[info.format]


def io_bytes(shape) -> int:
    """Decoded input, its source copy and the output being written (float32 / float64)."""
    return int(shape[0]) * int(shape[1]) * 24


def vet_input(f: Path, rel: Path, tr, cfg, out: Path, opts: dict, pixels: bool = True
              ) -> Planned:
    """Vet one input completely, before any translation (see the module docstring).

    Args:
        f: the input file; rel: its path relative to its input folder.
        tr: the ``Translator`` (shape checks, working scale, memory plan, intensity record).
        cfg: the ``TranslateConfig``.
        out: the output folder.
        opts: the reader's options (frame, allow_modality, allow_rgb).
        pixels: also decode the pixels and check them (False: the header, grid and plan only,
            e.g. for an output a resumed run already verified).

    Returns:
        The :class:`Planned` translation of ``f``.

    Raises:
        MedShiftError: the input is refused (a ``BadInput`` for a file-level problem).
    """
    what = f"image {str(f)!r}"
    info = probe_image(f, **opts)
    tr.check_shape(*info.shape, what=what)
    ws = tr.working_scale(info.shape, info.spacing_mm, cfg.working_size())
    try:
        check_scale(ws, cfg.size_chosen(), info.shape, tr.learned)
    except MedShiftError as exc:
        raise MedShiftError(f"{what}: {exc}") from None
    fit = (plan_fit(info.shape, int(min(ws.shape)), cfg.resize, tr.factor)
           if ws.how in ("image_size", "size") else
           plan_fit(info.shape, "native", cfg.resize, tr.factor, shape=ws.shape))
    tr.check_shape(*fit.shape, what=f"the working grid of {str(f)!r}")
    tr.plan((1, tr.image_channels, *fit.shape), io_bytes=io_bytes(info.shape),
            what=f"{str(f)!r} ({info.shape[0]}x{info.shape[1]} px, working "
            f"{fit.shape[0]}x{fit.shape[1]})")
    warns = [ws.warning or (tr.learned.size_warning(tuple(ws.shape or fit.shape))
                            if ws.how == "native" else None)]
    if tr.texture_off(*fit.shape):
        warns[0] = (f"{warns[0] or 'a working grid far from the learned scale'}; the student's "
                    "detector texture is off there (fitted at the learned scale): "
                    f"{option('noise_scale', 'S', 'S') or 'noise_scale=S'} adds it")
    dst = out / rel.parent / f"{rel.stem}_{cfg.target}{_suffix(cfg, info, f)}"
    note = f"{fit.resized[0]}x{fit.resized[1]} px, {ws.note}"
    item = Planned(f, rel, dst, fit, note)
    if pixels:
        img, src = read_image(f, with_source=True, input_bits=cfg.input_bits, **opts)
        item.verdict = tr.check_intensity(img, what, source=src, mode=cfg.intensity,
                                          input_bits=cfg.input_bits)
        del img
        item.per_image["intensity"] = item.verdict.note
        if item.verdict.warning:  # it names the image; the caller's line names it once
            warns.append(item.verdict.warning.removeprefix(f"{what}: "))
    item.warning = "; ".join(w for w in warns if w) or None
    return item


def vet_all(files, tr, cfg, out: Path, opts: dict, prev=None, progress: bool = False,
            say=None):
    """Vet every input (:func:`vet_input`) and its output name, before any translation.

    Output names: no two inputs onto one output, no output onto an input (even with
    ``overwrite``), no existing file unless ``overwrite`` -- or, resuming ``prev`` (a
    ``manifest.PreviousRun``), an output that run planned. With ``cfg.skip_bad`` a refused
    input is set aside (not printed: the caller reports each once).

    Returns:
        (order, plan, kept, bad): ``order`` = [(kind, what, extra)] in input order, kind
        "plan" (a :class:`Planned`), "kept" (a Planned whose output ``prev`` wrote and that
        was verified; extra = its manifest row) or "bad" (the file; extra = the error);
        ``plan``, ``kept`` the Planned of each kind; ``bad`` = [(file, error)].
    """
    from tqdm.auto import tqdm

    inputs = {f.resolve() for f, _ in files}
    plan, kept, bad, seen, order = [], [], [], {}, []
    def vetted(f, rel, pixels: bool) -> Planned | None:
        try:
            return vet_input(f, rel, tr, cfg, out, opts, pixels=pixels)
        except MedShiftError as exc:
            if not cfg.skip_bad:
                raise
            bad.append((f, exc))
            order.append(("bad", f, exc))
            return None

    t0, told = time.perf_counter(), say is None or progress
    for n, (f, rel) in enumerate(tqdm(files, disable=not progress, desc="vet", unit="img",
                                      leave=False, delay=SAY_AFTER)):
        if not told and time.perf_counter() - t0 > SAY_AFTER:
            told = True
            say(f"vetting {len(files)} input(s) before the first translation ({n} done)")
        done = prev is not None and prev.rows.get(str(f), {}).get("status") == "written"
        item = vetted(f, rel, pixels=not done)
        if item is None:
            continue
        # an output the interrupted run wrote is kept when verified (a changed one is refused)
        row = prev.verified(item.path, item.dst, cfg.overwrite) if done else None
        if done and row is None and (item := vetted(f, rel, pixels=True)) is None:
            continue  # changed since: vetted in full like any other input
        if item.dst in seen and seen[item.dst].resolve() == f.resolve():
            continue  # the same file given twice (e.g. a file and its folder)
        if item.dst in seen:
            raise MedShiftError(f"inputs {str(seen[item.dst])!r} and {str(f)!r} would both be "
                                f"written to {str(item.dst)!r}; translate them into separate "
                                "--out folders")
        if item.dst.resolve() in inputs:
            raise MedShiftError(f"output {str(item.dst)!r} would replace the input of that name "
                                "(never done, even with --overwrite); choose another --out")
        seen[item.dst] = f
        if row is not None:
            item.kept = True
            kept.append(item)
            order.append(("kept", item, row))
            continue
        planned_before = prev is not None and str(f) in prev.rows
        if item.dst.exists() and not cfg.overwrite and not planned_before:
            raise MedShiftError(f"output {str(item.dst)!r} already exists; pass --overwrite to "
                                "replace it" + ("" if prev else ", --resume to continue the run "
                                                "that wrote it") + ", or choose another --out")
        plan.append(item)
        order.append(("plan", item, None))
    return order, plan, kept, bad
