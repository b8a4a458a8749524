"""``medshift translate``: translate image files and folders into files a user can use.

Checked before any work (each a one-line error, exit 2 on the command line): the settings (tau
in [0, 1] and finite, steps >= 1, guidance finite, batch >= 1, sizes), the output folder
(writable, not a file), the run and its domains; then EVERY input is vetted before the first
translation (``vet.vet_input``, one function per image): header (format, bit depth, modality
-- radiographs only unless ``allow_modality`` --, frames (``frame``), colour (``allow_rgb``), PNG
chunk CRCs, a missing DICOM decoder), size, working grid and memory plan, output name (no two
inputs onto one output, no existing file unless ``overwrite``), the scale decision, and the
decoded pixels (NaN / Inf, corrupt data, the intensity rule). So a bad file stops the command
before anything is written, never half-way through a folder; ``skip_bad`` reports it on stderr,
once, and lists it in the manifest as skipped instead.

Then inputs are decoded again batch by batch, translated in batches of equal working shape and
written one by one, atomically, as soon as their batch is done. The run's manifest,
``manifest-<run id>.csv``, lists every input from the start with its outcome (written, skipped,
failed, not reached) and the SHA-256 of each input and output written; it is rewritten after
every batch, so a failure or an interruption never loses the outputs already written, and says
what was not done. ``resume`` continues an interrupted run, verified by those hashes
(translate/manifest.py; why not ``--skip-existing``: docs/data.md).

Outputs are in the input's own kind and geometry by default (``out_format="same"``): a DICOM
becomes a derived DICOM of the same Rows/Columns, bit depth and photometric interpretation (new
SOP Instance UIDs, one derived series per source series and command run with its own
SeriesNumber and SeriesDate/Time (``data.writers.derived_series``; a resumed run keeps its
series and their time), ImageType DERIVED\\SECONDARY, our DerivationCodeSequence, a
DerivationDescription naming the run by name and hash (never its local path), tau and
domains), an 8/16-bit PNG or TIFF one of the same depth and size (12-bit data in a 16-bit
container stays 12-bit). Relative paths of input folders are kept under ``out``, as
``<stem>_<target>.<ext>``.

Working scale (``size``): by default the grid the run learned (``learned.Learned``): a model
trained on native-resolution crops translates on the input's own grid (resampled to the learned
pixel spacing when both are known); a model trained on images resized to S px resizes the short
side to S (a one-line warning when that is more than 2x from the input). The scale is a
decision, not a warning: an input more than ``checks.SCALE_FACTOR`` (4x) from the learned scale
is refused unless ``size`` chose -- ``"learned"`` (that scale, detail lost), ``"native"`` (the
input's grid: texture at a scale the model never learned) or ``N`` (short side resized to N).
Large working grids are translated in tiles (``tile``), within a memory budget (``max_memory``)
planned before any work. The working size, scale and tiles are written into every output's
DerivationDescription and the manifest.

Intensity: integer samples are mapped by the bits the file declares (PNG sBIT, TIFF
BitsPerSample / SMaxSampleValue, DICOM BitsStored) or ``input_bits``; then the intensity rule
(``translate.intensity``, ``intensity``), in the vetting: in range -> translated; outside ->
translated with a one-line warning; a container / bit-depth mismatch -> refused naming
``--input-bits``; a non-radiograph far outside -> refused naming ``--intensity match`` /
``as-is``. ``match`` maps the image's percentiles onto the domain's and the output back. The
verdict is in the manifest (``intensity``) and the output's metadata; so is the hallucination
count of each output on its working grid (``checks.count_hallucinations``: ``hallucination_*``
columns).

Output safety (docs/data.md): ``out`` may not be (or lie inside) an input folder, no output may
replace an input (even with ``overwrite``), and every run writes its own manifest, so a second run
into the same folder, or a dataset root, never replaces another run's (or the dataset's)
``manifest.csv``. Files in input folders are found by extension or content (extensionless PACS
DICOMs); what is left out is listed, with the reason, in the summary and the manifest. SDE /
SDEdit noise is seeded per image from ``seed`` and the input's relative path, so an output does
not depend on what else is in the folder.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.io import read_image
from ..data.writers import derived_series, new_series_uid, write_image
from ..errors import MedShiftError, offering, skip_note
from ..fileio import check_not_inside, check_writable_dir, sha256_file
from .checks import count_hallucinations, hallucination_columns
from .file_options import DICOM_MODALITIES, OUT_FORMATS, TranslateConfig  # noqa: F401
from .manifest import (
    FAILED,
    NOT_REACHED,
    RUN_IDENTITY,
    SKIPPED,
    WRITTEN,
    Manifest,
    Shard,
    new_run_id,
    previous_run,
    run_columns,
    series_time,
)
from .vet import Planned, collect, io_bytes, vet_all

__all__ = ["TranslateConfig", "TranslateInterrupted", "TranslateSummary", "translate_files"]

class TranslateInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM during a folder translate; the manifest says what was done."""


@dataclass
class TranslateSummary:
    """What ``translate_files`` did."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    kept: int = 0
    out: Path | None = None
    manifest: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        extra = (f"; {len(self.left_out)} file(s) in the input folders are not images (listed "
                 "in the manifest)" if self.left_out else "")
        kept = (f"; {self.kept} written before the interruption were verified and kept"
                if self.kept else "")
        return (f"wrote {self.written} image(s) to {self.out} ({self.skipped} skipped, "
                f"{self.failed} failed){kept}{extra}; manifest: {self.manifest}")


def _say(msg: str) -> None:
    print(f"medshift translate: {' '.join(msg.split())}", file=sys.stderr, flush=True)


def _image_seed(seed: int, rel: Path) -> int:
    """The noise seed of one input: a hash of --seed and its relative path (not its position)."""
    h = hashlib.sha256(f"{int(seed)}:{rel.as_posix()}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def translate_files(cfg: TranslateConfig) -> TranslateSummary:
    """Translate ``cfg.inputs`` into ``cfg.out`` (see the module docstring).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank plans all inputs, translates its own share
    (batch j of the one-process run's batches when j % world == rank: disjoint, deterministic,
    the same bytes), writes its outputs and a partial manifest; rank 0 merges the partial
    manifests into one at the end. A rank that fails mid-run records it and still takes part
    in the merge, so the others' outputs are complete and listed.

    Raises:
        MedShiftError: a bad setting or input (before any translation), or a failure while
            translating / writing (the outputs so far are complete and in the manifest).
        TranslateInterrupted: SIGINT; the manifest lists every input's outcome, and
            ``resume=True`` continues the run.

    A message that advises an option names it as the caller passes it: the flag under
    ``medshift translate``, else the field of ``cfg`` (``errors.offering``).

    Runs with ``cfg.threads`` CPU threads (``_threads``), restored afterwards.
    """
    import dataclasses

    before = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg, Shard.from_env()))
    try:
        with offering({f.name: f.name for f in dataclasses.fields(cfg)}):
            return _translate_files(cfg)
    finally:
        torch.set_num_threads(before)


def _translate_files(cfg: TranslateConfig) -> TranslateSummary:
    import contextlib

    from tqdm.auto import tqdm

    from .. import use_backend
    from ..run import load_run, resolve_device
    from .translator import Translator

    check_not_inside(cfg.out, [("input folder", p) for p in cfg.inputs if Path(p).is_dir()],
                     command="translate")  # before the folder is made
    shard = Shard.from_env()
    out = check_writable_dir(cfg.out)
    dev = shard.device(resolve_device(cfg.device))
    ctx = use_backend(cfg.backend) if cfg.backend else contextlib.nullcontext()
    run = load_run(cfg.checkpoint, device=dev)
    tiles = {} if cfg.tile is None else {"tile": cfg.tile}  # None: the settings' default
    tr = Translator(run, cfg.source, cfg.target, tau=cfg.tau, mode=cfg.mode, device=dev,
                    batch_size=cfg.batch_size, seed=cfg.seed, overlap=cfg.overlap,
                    max_memory=cfg.max_memory, tile_batch=cfg.tile_batch, **tiles,
                    engine=cfg.engine, bf16={"auto": None, "fp32": False, "bf16": True}[
                        cfg.precision], **cfg.recipe())
    seed = tr.settings.seed
    opts = dict(frame=cfg.frame, allow_modality=cfg.modalities(), allow_rgb=cfg.allow_rgb)
    prev = previous_run(out, run_columns(tr, cfg, "", "", seed)) if cfg.resume else None
    run_id = prev.run_id if prev else shard.common(new_run_id())
    series = prev.series_uid if prev else shard.common(new_series_uid())
    when = series_time(run_id)  # SeriesDate/Time of the DICOM outputs: when the run started
    summary = TranslateSummary(out=out, manifest=out / f"manifest-{run_id}.csv")
    common = run_columns(tr, cfg, run_id, series, seed)
    manifest = Manifest(shard.manifest_path(summary.manifest), common)
    # 1. every input vetted (header, grid, memory plan, output name, pixels) before any work
    files, left = collect(cfg.inputs)
    summary.left_out = left
    if shard.is_main:
        for p, why in left:  # not images: listed first, with why
            manifest.add(p, None, SKIPPED, why)
    order, plan, kept, bad = vet_all(files, tr, cfg, out, opts, prev,
                                     progress=cfg.progress and shard.is_main,
                                     say=_say if shard.is_main else None)
    if not plan and not kept:
        raise MedShiftError("no readable input image (all were skipped)")
    warnings = [f"{p.path}: {p.warning}" for p in plan if p.warning]
    for w in warnings[:5]:
        _say(f"warning: {w}")
    if len(warnings) > 5:
        _say(f"warning: ... and {len(warnings) - 5} more input(s) like these")
    # 2. batches of one working shape (the same batches whatever the number of ranks: a
    # rank translates every world-th batch, so each image is computed exactly as alone). A
    # resumed run forms the batches of the whole run, outputs it keeps included, and
    # translates every batch that holds an output still to write: the same bytes as one
    # uninterrupted run (a batch's composition changes the last bits of a translation).
    groups: dict[tuple[int, int], list[Planned]] = {}
    for kind, item, _ in order:
        if kind in ("plan", "kept"):
            groups.setdefault(item.fit.shape, []).append(item)
    steps = shard.common({shape: max(1, min(cfg.batch_size, tr.plan(
        (len(items), tr.image_channels, *shape), io_bytes=io_bytes(shape)).images))
        for shape, items in groups.items()})
    batches = [items[k:k + steps[shape]] for shape, items in groups.items()
               for k in range(0, len(items), steps[shape])]
    batches = [b for b in batches if not all(item.kept for item in b)]
    mine = [b for j, b in enumerate(batches) if j % shard.world == shard.rank]
    mine_ids = {id(item) for items in mine for item in items}
    for kind, what, extra in order:  # every input in the manifest from the start, in order
        if kind == "plan" and id(what) in mine_ids:
            manifest.add(what.path, what.dst.relative_to(out), NOT_REACHED, **what.per_image)
        elif kind == "bad" and shard.is_main:
            _say(f"skipped {skip_note(extra)}")
            manifest.add(what, None, SKIPPED, getattr(extra, "problem", str(extra)))
        elif kind == "kept" and shard.is_main:
            manifest.add(what.path, extra["output"], WRITTEN, **{
                k: v for k, v in extra.items()
                if k not in ("input", "output", "status", "reason", *RUN_IDENTITY)})
    summary.skipped, summary.kept = len(bad), len(kept)
    manifest.write()
    engine = tr.engine  # built now, after every check: a bf16 check, or the ONNX cache
    if shard.is_main:  # one line per stage, with or without the progress bar
        big = max(groups, key=lambda g: g[0] * g[1]) if groups else None
        how = "" if engine is None else f"; engine {engine.describe()}, " \
            f"{torch.get_num_threads()} thread(s), tiles {common['tiles']}"
        p = big and tr.plan((1, tr.image_channels, *big), io_bytes=io_bytes(big))
        _say(f"vetted {len(files)} input(s){f', resuming run {run_id}' if prev else ''}: "
             f"translating {len(plan)} image(s) in {len(batches)} batch(es)"
             f"{f' over {shard.world} ranks' if shard.enabled else ''}"
             + (f"; largest working grid {big[0]}x{big[1]}: {p.describe()}" if big else "")
             + (f"; {len(kept)} already written and verified" if kept else "") + how)
    derivation = {"model": tr.run.identity(), "tau": common["tau"], "source": common["source"],
                  "target": common["target"], "version": common["version"],
                  "settings": {k: common[k] for k in ("guidance_encode", "guidance_decode",
                                                      "steps", "solver", "decode")},
                  "tiles": common["tiles"]}
    bar = tqdm(total=sum(not item.kept for b in mine for item in b),
               disable=not cfg.progress or not shard.is_main, desc="translate", unit="img")
    failure = None
    try:
        with ctx:
            for items in mine:  # written as soon as its batch is done
                _batch(items, tr, cfg, opts, derivation, (series, when), summary, manifest)
                manifest.write()
                bar.update(sum(not item.kept for item in items))
    except (MedShiftError, OSError) as exc:
        if not shard.enabled:
            raise
        failure = exc  # the other ranks finish; the merge lists what this one wrote
        manifest.add("", None, FAILED, f"rank {shard.rank} stopped: {exc}")
    except KeyboardInterrupt:
        n = manifest.counts()
        raise TranslateInterrupted(
            f"after {n[WRITTEN]} of {n[WRITTEN] + n[NOT_REACHED] + n[FAILED]} image(s); "
            f"{summary.manifest} lists every input's outcome; run the same command with "
            "--resume to continue") from None
    finally:
        bar.close()
        manifest.write()
    shard.finish(manifest, summary, {str(f): k for k, (f, _) in enumerate(files)})
    if failure is not None:
        raise MedShiftError(f"rank {shard.rank}: {failure}")
    return summary


def _threads(cfg: TranslateConfig, shard) -> int:
    """--threads, else OMP_NUM_THREADS, else this process's CPUs (shared by torchrun's ranks)."""
    import os

    from .engine import machine_threads

    if cfg.threads:
        return int(cfg.threads)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if shard.enabled else 1
    return max(1, machine_threads() // max(1, local))


def _batch(items: list[Planned], tr, cfg, opts, derivation, series, summary, manifest) -> None:
    """Decode, translate and write one batch of vetted inputs of one working shape (``series``:
    the run's (series UID, series time))."""
    xs, srcs, ok = [], [], []
    for item in items:
        what = f"image {str(item.path)!r}"
        try:
            img, src = read_image(item.path, with_source=True, input_bits=cfg.input_bits,
                                  verify_crc=False, **opts)
        except MedShiftError as exc:  # changed since it was vetted
            _fail(item, exc, cfg, summary, manifest)
            continue
        verdict = item.verdict
        if verdict is None:  # kept by a resume (vetted without its pixels): computed as before
            try:
                verdict = tr.check_intensity(img, what, source=src, mode=cfg.intensity,
                                             input_bits=cfg.input_bits)
            except MedShiftError:  # only its batch mates need it: they get the same batch
                verdict = None
        x = torch.from_numpy(img if verdict is None else verdict.apply(img))
        xs.append(item.fit.apply(x)[0])
        del img, x
        srcs.append((src, verdict))
        ok.append(item)
    if not ok:
        return
    seed = tr.settings.seed
    gens = [torch.Generator().manual_seed(_image_seed(seed, p.rel)) for p in ok]
    y = tr.translate(torch.stack(xs), generators=gens).cpu()
    uid, when = series
    for item, (src, verdict), xi, yi in zip(ok, srcs, xs, y):
        if item.kept:  # written and verified before the interruption: computed, not written
            continue
        # new compact structures, on the working grid (what the model was given and made)
        found = count_hallucinations(xi[0], yi[0]) if cfg.count_hallucinations else None
        res = verdict.restore(item.fit.restore(yi[None])[0, 0].numpy())
        extra = {"working": item.note, "intensity": verdict.note}
        if found is not None:
            extra["new structures"] = f"{found['count']} ({found['area_px']} px, working grid)"
        try:
            write_image(item.dst, res, src, cfg.out_format, derivation={**derivation, **extra},
                        series_uid=uid, series_time=when,
                        exclusive=not (cfg.overwrite or cfg.resume))
        except (MedShiftError, OSError) as exc:
            _fail(item, MedShiftError(f"cannot write {item.dst}: {exc}"), cfg, summary,
                  manifest)
            continue
        summary.written += 1
        summary.outputs.append(item.dst)
        dicom = item.dst.suffix.lower() in (".dcm", ".dicom")
        manifest.add(item.path, item.dst.relative_to(summary.out), WRITTEN,
                     working_size=f"{item.fit.resized[0]}x{item.fit.resized[1]}",
                     scale=item.note.split(", ", 1)[1], input_sha256=sha256_file(item.path),
                     sha256=sha256_file(item.dst), **item.per_image,
                     dicom_series_uid=derived_series(uid, src)[0] if dicom else "",
                     **hallucination_columns(found))
    del xs


def _fail(item: Planned, exc: MedShiftError, cfg, summary, manifest) -> None:
    """Record a failed input; without ``skip_bad`` stop the run (the manifest keeps it)."""
    summary.failed += 1
    manifest.add(item.path, None, FAILED, getattr(exc, "problem", str(exc)), **item.per_image)
    if not cfg.skip_bad:
        raise exc
    _say(f"failed {skip_note(exc)}")
