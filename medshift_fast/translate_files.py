"""``medshift translate``: translate image files and folders into files a user can use.

Checked before any work (each a one-line error, exit 2 on the command line): the settings (tau
in [0, 1] and finite, steps >= 1, guidance finite, batch >= 1, sizes), the output folder
(writable, not a file), the run and its domains, every output name (no two inputs onto one
output, no existing file unless ``overwrite``) and every input file's header: format, bit depth,
modality (radiographs only unless ``allow_modality``), frames (``frame``), colour
(``allow_rgb``), PNG chunk CRCs, a missing DICOM decoder (named). ``skip_bad`` reports a bad
input on stderr and leaves it out instead.

Then inputs are decoded lazily, translated in batches of equal working shape and written one by
one, atomically, as soon as their batch is done (``manifest.csv`` is rewritten after every
batch), so a failure later never loses the outputs already written.

Outputs are in the input's own kind and geometry by default (``out_format="same"``): a DICOM
becomes a derived DICOM of the same Rows/Columns, bit depth and photometric interpretation (new
SOP Instance UIDs, ONE new series per command run, ImageType DERIVED\\SECONDARY, a
DerivationDescription naming the model, tau and domains), an 8/16-bit PNG or TIFF one of the same
depth and size. The network runs at the run's training size (``size``), or at ``size="native"``,
and the result is mapped back through the exact inverse of the resize and pad
(``data.geometry``). Relative paths of input folders are kept under ``out``, as
``<stem>_<target>.<ext>``.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.geometry import RESIZE_MODES, plan_fit
from .data.io import probe_image, read_image
from .data.writers import new_series_uid, output_suffix, write_image
from .errors import MedShiftError
from .fileio import atomic_write_text, check_writable_dir
from .translator import MODES, TranslateOptions

__all__ = ["TranslateConfig", "TranslateSummary", "translate_files"]

OUT_FORMATS = ("same", "png", "tiff", "dicom")


@dataclass(frozen=True, kw_only=True)
class TranslateConfig(TranslateOptions):
    """``medshift translate``: translate images from one domain to another.

    Attributes:
        checkpoint: run directory written by ``medshift train`` (or ``medshift distill``).
        inputs: image files or folders (searched recursively for .png/.tif/.tiff/.dcm).
        out: output folder (relative paths of input folders are kept).
        tau: translation time in [0, 1] (larger keeps more structure).
        out_format: same (the input's own kind) | png | tiff | dicom.
        size: working size in pixels (default: the run's training size), or native (the
            input's own size; memory grows with the image).
        resize: crop (short side to size; the whole image is translated) | pad (long side to
            size, padded with air); the result is mapped back to the input's geometry.
        batch_size: images per network batch.
        mode: eager | fused | compiled | cuda_graph (fixed-step solvers for the last three).
        device: auto | cpu | cuda | cuda:N.
        backend: op backend preference for the whole pipeline (auto | reference | cpp |
            triton | cuda).
        allow_modality: also translate these non-radiographic DICOM modalities
            (comma-separated, e.g. CT,MR; all = any).
        frame: frame (0-based) of multi-frame DICOMs and multi-page TIFFs to translate.
        allow_rgb: convert colour inputs to grey (BT.601 luma) instead of refusing them.
        skip_bad: report unreadable or refused inputs on stderr and translate the others.
        overwrite: replace existing output files instead of refusing.
        progress: show a progress bar.
    """

    checkpoint: str
    inputs: tuple[str, ...]
    out: str
    tau: float | None = None
    out_format: str = "same"
    size: str | None = None
    resize: str = "crop"
    batch_size: int = 16
    mode: str = "eager"
    device: str = "auto"
    backend: str | None = None
    allow_modality: str | None = None
    frame: int | None = None
    allow_rgb: bool = False
    skip_bad: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.source or not self.target:
            raise MedShiftError("translate needs --source and --target domain names")
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise MedShiftError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.mode not in MODES:
            raise MedShiftError(f"unknown --mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.out_format not in OUT_FORMATS:
            raise MedShiftError(f"unknown --out-format {self.out_format!r}; choose one of "
                                f"{', '.join(OUT_FORMATS)}")
        if self.resize not in RESIZE_MODES:
            raise MedShiftError(f"unknown --resize {self.resize!r}; choose crop or pad")
        if self.size is not None and self.size != "native":
            try:
                ok = int(self.size) >= 8
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise MedShiftError(f"--size must be a number of pixels >= 8 or 'native', got "
                                    f"{self.size!r}")
        if self.frame is not None and int(self.frame) < 0:
            raise MedShiftError(f"--frame must be >= 0, got {self.frame}")
        if not self.inputs:
            raise MedShiftError("no inputs: pass image files or folders")

    def modalities(self):
        """The ``allow_modality`` argument of ``data.read_image``."""
        if not self.allow_modality:
            return False
        if self.allow_modality.strip().lower() == "all":
            return True
        return {m.strip().upper() for m in self.allow_modality.split(",") if m.strip()}


@dataclass
class TranslateSummary:
    """What ``translate_files`` did."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    out: Path | None = None
    manifest: Path | None = None
    outputs: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"wrote {self.written} image(s) to {self.out} ({self.skipped} skipped, "
                f"{self.failed} failed); manifest: {self.manifest}")


def _collect(inputs) -> list[tuple[Path, Path]]:
    """[(file, its output path relative to out, before the suffix)] in a stable order."""
    from .data import IMAGE_EXT

    files: list[tuple[Path, Path]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in IMAGE_EXT
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise MedShiftError(f"input folder {s!r} contains no images (.png/.tif/.dcm)")
            files += [(f, f.relative_to(p)) for f in found]
        elif p.is_file():
            files.append((p, Path(p.name)))
        else:
            raise MedShiftError(f"input {s!r} does not exist")
    return files


def _say(msg: str) -> None:
    print(f"medshift translate: {' '.join(msg.split())}", file=sys.stderr)


class _Manifest:
    COLS = ["input", "output", "status", "source", "target", "tau", "guidance_encode",
            "guidance_decode", "steps", "solver", "decode", "size", "resize", "run", "series_uid",
            "version"]

    def __init__(self, path: Path, common: dict) -> None:
        self.path, self.common, self.rows = path, common, []

    def add(self, inp, out, status: str) -> None:
        self.rows.append({"input": str(inp), "output": "" if out is None else str(out),
                          "status": status, **self.common})

    def write(self) -> None:
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=self.COLS, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def translate_files(cfg: TranslateConfig) -> TranslateSummary:
    """Translate ``cfg.inputs`` into ``cfg.out`` (see the module docstring)."""
    import contextlib

    from tqdm.auto import tqdm

    from . import __version__, use_backend
    from .run import load_run, resolve_device
    from .translator import Translator

    out = check_writable_dir(cfg.out)
    dev = resolve_device(cfg.device)
    ctx = use_backend(cfg.backend) if cfg.backend else contextlib.nullcontext()
    run = load_run(cfg.checkpoint, device=dev)
    tr = Translator(run, cfg.source, cfg.target, tau=cfg.tau, mode=cfg.mode, device=dev,
                    batch_size=cfg.batch_size, **cfg.recipe())
    size = cfg.size if cfg.size == "native" else int(cfg.size or run.image_size)
    opts = dict(frame=cfg.frame, allow_modality=cfg.modalities(), allow_rgb=cfg.allow_rgb)
    summary = TranslateSummary(out=out, manifest=out / "manifest.csv")
    series = new_series_uid()
    desc = tr.describe()
    manifest = _Manifest(summary.manifest, {
        "source": desc["source_domain"], "target": desc["target_domain"], "tau": desc["tau"],
        **{k: desc[k] for k in ("guidance_encode", "guidance_decode", "steps", "solver",
                                "decode")},
        "size": size, "resize": cfg.resize, "run": desc["run"], "series_uid": series,
        "version": __version__})
    # 1. every input header and output name, before any work
    plan, seen = [], {}
    for f, rel in _collect(cfg.inputs):
        try:
            info = probe_image(f, **opts)
        except MedShiftError as exc:
            if not cfg.skip_bad:
                raise
            _say(f"skipped {f}: {exc}")
            summary.skipped += 1
            manifest.add(f, None, "skipped")
            continue
        suffix = output_suffix(cfg.out_format, None) if cfg.out_format != "same" else \
            {"png": ".png", "tiff": Path(f).suffix or ".tif", "dicom": ".dcm"}[info.format]
        dst = out / rel.parent / f"{rel.stem}_{cfg.target}{suffix}"
        if dst in seen and seen[dst].resolve() == f.resolve():
            continue  # the same file given twice (e.g. a file and its folder)
        if dst in seen:
            raise MedShiftError(f"inputs {str(seen[dst])!r} and {str(f)!r} would both be written "
                                f"to {str(dst)!r}; translate them into separate --out folders")
        seen[dst] = f
        if dst.exists() and not cfg.overwrite:
            raise MedShiftError(f"output {str(dst)!r} already exists; pass --overwrite to replace "
                                "it or choose another --out")
        fit = plan_fit(info.shape, size, cfg.resize, tr.factor)
        plan.append((f, dst, fit))
    if not plan:
        raise MedShiftError("no readable input image (all were skipped)")
    # 2. translate in batches of one working shape, write as soon as a batch is done
    derivation = {"model": desc["run"], "tau": desc["tau"], "source": desc["source_domain"],
                  "target": desc["target_domain"], "version": __version__,
                  "settings": {k: desc[k] for k in ("guidance_encode", "guidance_decode",
                                                    "steps", "solver", "decode")}}
    groups: dict[tuple[int, int], list] = {}
    for item in plan:
        groups.setdefault(item[2].shape, []).append(item)
    bar = tqdm(total=len(plan), disable=not cfg.progress, desc="translate", unit="img")
    try:
        with ctx:
            for items in groups.values():
                for k in range(0, len(items), cfg.batch_size):
                    _batch(items[k:k + cfg.batch_size], tr, cfg, opts, derivation, series,
                           summary, manifest)
                    manifest.write()
                    bar.update(len(items[k:k + cfg.batch_size]))
    finally:
        bar.close()
        manifest.write()
    return summary


def _batch(items, tr, cfg, opts, derivation, series, summary, manifest) -> None:
    """Decode, translate and write one batch of inputs of one working shape."""
    xs, srcs, kept = [], [], []
    for f, dst, fit in items:
        try:
            img, src = read_image(f, with_source=True, **opts)
        except MedShiftError as exc:
            if not cfg.skip_bad:
                raise
            _say(f"failed {f}: {exc}")
            summary.failed += 1
            manifest.add(f, None, "failed")
            continue
        xs.append(fit.apply(torch.from_numpy(img))[0])
        srcs.append(src)
        kept.append((f, dst, fit))
    if not kept:
        return
    y = tr.translate(torch.stack(xs)).cpu()
    for (f, dst, fit), src, yi in zip(kept, srcs, y):
        res = fit.restore(yi[None])[0, 0].numpy()
        try:
            write_image(dst, res, src, cfg.out_format, derivation=derivation, series_uid=series,
                        exclusive=not cfg.overwrite)
        except (MedShiftError, OSError) as exc:
            if not cfg.skip_bad:
                raise MedShiftError(f"cannot write {dst}: {exc}") from exc
            _say(f"failed to write {dst}: {exc}")
            summary.failed += 1
            manifest.add(f, None, "failed")
            continue
        summary.written += 1
        summary.outputs.append(dst)
        manifest.add(f, dst.relative_to(summary.out), "written")
