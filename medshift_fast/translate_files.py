"""``medshift translate``: translate image files and folders, writing results a user can use.

Everything is checked before any work: the settings (tau in [0, 1] and finite, steps >= 1,
guidance finite, batch >= 1), the run and its domains, the output folder (writable, not a
file), and every input file (decoded once; a bad one is an error naming it, or with
``skip_bad`` is reported and left out). Then the inputs are translated in batches of equal
geometry and each result is written atomically as soon as its batch is done, so a failure
later never loses the outputs already written.

Outputs keep the inputs' relative paths under ``out`` (a folder argument's own tree; a file
argument lands at the top), as ``<stem>_<target>.<ext>``; no output overwrites another (an
existing file is refused unless ``overwrite``; two inputs that would map to the same output are
refused before any work). ``out/manifest.csv`` lists input -> output with the settings; the
summary counts written, skipped and failed images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MedShiftError
from .fileio import atomic_write_text, check_writable_dir
from .translator import MODES, RECIPE, TranslateOptions

__all__ = ["TranslateConfig", "TranslateSummary", "translate_files"]


@dataclass(frozen=True, kw_only=True)
class TranslateConfig(TranslateOptions):
    """``medshift translate``: translate images from one domain to another.

    Attributes:
        checkpoint: run directory written by ``medshift train`` (or ``medshift distill``).
        inputs: image files or folders (searched recursively for .png/.tif/.tiff/.dcm).
        out: output folder (relative paths of input folders are kept).
        tau: translation time in [0, 1] (larger keeps more structure).
        batch_size: images per network batch.
        mode: eager | fused | compiled | cuda_graph (fixed-step solvers for the last three).
        device: auto | cpu | cuda | cuda:N.
        backend: op backend preference for the whole pipeline (auto | reference | cpp |
            triton | cuda).
        skip_bad: report unreadable inputs on stderr and translate the others.
        overwrite: replace existing output files instead of refusing.
        progress: show a progress bar.
    """

    checkpoint: str
    inputs: tuple[str, ...]
    out: str
    tau: float = RECIPE["tau"]
    batch_size: int = 16
    mode: str = "eager"
    device: str = "auto"
    backend: str | None = None
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
        if not self.inputs:
            raise MedShiftError("no inputs: pass image files or folders")


@dataclass
class TranslateSummary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    out: Path | None = None
    manifest: Path | None = None

    def __str__(self) -> str:
        return (f"wrote {self.written} image(s) to {self.out} ({self.skipped} skipped, "
                f"{self.failed} failed); manifest: {self.manifest}")


def _collect(inputs) -> list[tuple[Path, Path]]:
    """[(file, its output path relative to out without suffix)] in a stable order."""
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


def _null_ctx():
    return contextlib.nullcontext()


def translate_files(cfg: TranslateConfig) -> TranslateSummary:
    """Translate ``cfg.inputs`` into ``cfg.out`` (see the module docstring)."""
    from tqdm.auto import tqdm

    from . import __version__, use_backend
    from .data import read_image, write_png16
    from .run import load_run, resolve_device
    from .translator import Translator

    out = check_writable_dir(cfg.out)
    dev = resolve_device(cfg.device)
    ctx = use_backend(cfg.backend) if cfg.backend else _null_ctx()
    run = load_run(cfg.checkpoint, device=dev)
    tr = Translator(run, cfg.source, cfg.target, tau=cfg.tau, mode=cfg.mode, device=dev,
                    batch_size=cfg.batch_size, **cfg.recipe())
    files = _collect(cfg.inputs)
    # every output name, and a clash between two inputs, before any work
    plan, seen = [], {}
    for f, rel in files:
        dst = out / rel.parent / f"{rel.stem}_{cfg.target}.png"
        if dst in seen and seen[dst].resolve() == f.resolve():
            continue  # the same file given twice (e.g. a file and its folder)
        if dst in seen:
            raise MedShiftError(f"inputs {str(seen[dst])!r} and {str(f)!r} would both be written "
                                f"to {str(dst)!r}; translate them into separate --out folders")
        seen[dst] = f
        if dst.exists() and not cfg.overwrite:
            raise MedShiftError(f"output {str(dst)!r} already exists; pass --overwrite to replace "
                                "it or choose another --out")
        plan.append((f, dst))
    summary = TranslateSummary(out=out)
    images, kept = [], []
    for f, dst in plan:
        try:
            img = torch.from_numpy(read_image(f))
        except MedShiftError as exc:
            if not cfg.skip_bad:
                raise
            print(f"medshift translate: skipped {f}: {' '.join(str(exc).split())}",
                  file=sys.stderr)
            summary.skipped += 1
            continue
        images.append(img)
        kept.append((f, dst))
    if not kept:
        raise MedShiftError("no readable input image (all were skipped)")
    size = run.image_size
    from .data import fit_square

    rows = []
    with ctx:
        bs = cfg.batch_size
        for k in tqdm(range(0, len(kept), bs), disable=not cfg.progress, desc="translate"):
            chunk = kept[k:k + bs]
            x = torch.stack([fit_square(im, size) for im in images[k:k + bs]])
            y = tr.translate(x.to(dev)).cpu()
            for (f, dst), img in zip(chunk, y):
                write_png16(dst, img[0].numpy())
                summary.written += 1
                rows.append({"input": str(f), "output": str(dst.relative_to(out))})
    desc = tr.describe()
    buf = io.StringIO()
    cols = ["input", "output", "source", "target", "tau", "guidance_encode", "guidance_decode",
            "steps", "solver", "decode", "run", "version"]
    wr = csv.DictWriter(buf, fieldnames=cols)
    wr.writeheader()
    for r in rows:
        wr.writerow({**r, "source": desc["source_domain"], "target": desc["target_domain"],
                     **{k: desc[k] for k in cols[4:10]}, "run": desc["run"],
                     "version": __version__})
    summary.manifest = out / "manifest.csv"
    atomic_write_text(summary.manifest, buf.getvalue())
    return summary
