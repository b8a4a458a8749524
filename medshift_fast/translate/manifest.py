"""The bookkeeping of one ``medshift translate`` run: its manifest, and its torchrun shards.

Every run writes its own manifest, ``manifest-<run id>.csv`` (UTC time + 4 random hex digits), so
a second run into the same folder -- or into a dataset root -- never replaces another run's (or
the dataset's) ``manifest.csv``. It lists EVERY input with its outcome (``STATUSES``: written,
skipped, failed, not reached; files of input folders that are not images as skipped, with why),
the SHA-256 of each input and of each output written, and is rewritten atomically after the
vetting and after every batch, so an interrupted run's manifest says what was done and what was
not. ``translate --resume`` finds the interrupted run's manifest (:func:`previous_run`) and
continues it under the same run id and DICOM series. Under ``torchrun`` each rank writes a
hidden partial manifest and rank 0 merges them, in input order, at the end (``Shard.finish``).

Per input it also records how the image was translated: its working size and scale, the
intensity rule's verdict (``intensity``), the count, area and largest z of new compact
structures in the output (``hallucination_*``, ``checks.count_hallucinations``) and, for a DICOM
output, the derived series it joined (``dicom_series_uid``; ``series_uid`` is the run's own UID,
from which every derived series of the run is made: ``data.writers.derived_series``).
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import sys
import time
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..fileio import atomic_write_text, sha256_file

__all__ = ["FAILED", "Manifest", "NOT_REACHED", "PreviousRun", "SKIPPED", "STATUSES", "Shard",
           "WRITTEN", "new_run_id", "previous_run", "run_columns", "series_time"]

WRITTEN, SKIPPED, FAILED, NOT_REACHED = "written", "skipped", "failed", "not reached"
STATUSES = (WRITTEN, SKIPPED, FAILED, NOT_REACHED)
#: columns that name one run, not its settings (a resumed run keeps its own)
RUN_IDENTITY = ("run_id", "series_uid")


RUN_TIME = "%Y%m%dT%H%M%SZ"  # the UTC start time in a run id


def new_run_id() -> str:
    """A run id for the manifest's name: UTC time and 4 random hex digits."""
    return time.strftime(RUN_TIME, time.gmtime()) + "-" + os.urandom(2).hex()


def series_time(run_id: str) -> datetime.datetime:
    """When run ``run_id`` started, in local time: the SeriesDate / SeriesTime of its DICOM
    outputs (the same for every output of the run, a resumed one included); now for an id
    that does not start with a time."""
    try:
        t = datetime.datetime.strptime(run_id.split("-", 1)[0], RUN_TIME)
    except ValueError:
        return datetime.datetime.now()
    return t.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


class Manifest:
    """The rows of one run's manifest, one per input (rewritten atomically as the run goes).

    ``add`` records an input's outcome; recording the same input again replaces its row (an
    input planned as "not reached" becomes "written" or "failed"). Extra per-image fields
    passed to ``add`` become columns after ``COLS``, in the order they first appear.
    """

    COLS = ["input", "output", "status", "reason", "source", "target", "tau", "guidance_encode",
            "guidance_decode", "steps", "solver", "decode", "seed", "working_size", "scale",
            "tiles", "resize", "intensity", "hallucination_count", "hallucination_area_px",
            "hallucination_max_z", "input_sha256", "sha256", "run", "run_id", "series_uid",
            "dicom_series_uid", "version"]

    def __init__(self, path: Path, common: dict) -> None:
        self.path, self.common = path, common
        self._rows: dict[str, dict] = {}

    @property
    def rows(self) -> list[dict]:
        """The rows, in the order their inputs were first recorded."""
        return list(self._rows.values())

    @rows.setter
    def rows(self, rows: list[dict]) -> None:
        """Replace every row (e.g. by the rows of the ranks' merged partial manifests)."""
        self._rows = {}
        for r in rows:
            self._rows[r["input"] or f"#{len(self._rows)}"] = r

    def add(self, inp, out, status: str, reason: str = "", **per_image) -> None:
        """Record one input's outcome (status, reason and per-image fields)."""
        key = str(inp) or f"#{len(self._rows)}"
        self._rows[key] = {**self.common, "input": str(inp),
                           "output": "" if out is None else str(out), "status": status,
                           "reason": " ".join(str(reason).split()), **per_image}

    def get(self, inp) -> dict | None:
        """The row of input ``inp``, or None."""
        return self._rows.get(str(inp))

    def counts(self) -> dict[str, int]:
        """{status: number of inputs}."""
        out = dict.fromkeys(STATUSES, 0)
        for r in self._rows.values():
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def columns(self) -> list[str]:
        """``COLS`` and then every extra per-image field, in the order first seen."""
        cols = list(self.COLS)
        for r in self._rows.values():
            cols += [k for k in r if k not in cols]
        return cols

    def write(self, path: Path | None = None) -> None:
        """Write the rows as CSV, atomically (default: the manifest's own path)."""
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=self.columns(), extrasaction="ignore")
        wr.writeheader()
        wr.writerows(self._rows.values())
        atomic_write_text(path or self.path, buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    """The rows of a manifest file."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class PreviousRun:
    """An earlier run's manifest that ``translate --resume`` continues.

    Attributes:
        path: its manifest file; run_id, series_uid: the run's identity (kept by the resume).
        rows: {input: its row} (the most advanced outcome of any partial manifest of that run).
    """

    def __init__(self, path: Path, rows: list[dict]) -> None:
        self.path = path
        self.run_id, self.series_uid = rows[0]["run_id"], rows[0]["series_uid"]
        rank = {NOT_REACHED: 0, SKIPPED: 1, FAILED: 2, WRITTEN: 3}
        self.rows: dict[str, dict] = {}
        for r in rows:
            old = self.rows.get(r["input"])
            if old is None or rank.get(r["status"], 0) > rank.get(old["status"], 0):
                self.rows[r["input"]] = r


    def verified(self, inp: Path, dst: Path, overwrite: bool = False) -> dict | None:
        """This run's row of input ``inp`` when its output ``dst`` is verified (the input's
        and the output's SHA-256 are those recorded), else None (translate it again).

        Raises:
            MedShiftError: the output was changed after this run wrote it (unless
                ``overwrite``: then None).
        """
        row = self.rows.get(str(inp))
        if row is None or row["status"] != WRITTEN or not Path(dst).is_file():
            return None
        if row.get("input_sha256") != sha256_file(inp):
            print(f"medshift translate: {inp} changed since run {self.run_id} translated it: "
                  "translating it again", file=sys.stderr)
            return None
        if row.get("sha256") != sha256_file(dst):
            if not overwrite:
                raise MedShiftError(f"output {str(dst)!r} was changed after run {self.run_id} "
                                    "wrote it (its SHA-256 differs from the manifest's); pass "
                                    "--overwrite to translate it again, or move it away")
            return None
        return row


def run_columns(tr, cfg, run_id: str, series: str, seed: int) -> dict:
    """The manifest columns every row of a run shares: its settings and identity.

    Args:
        tr: the run's ``Translator``; cfg: its ``TranslateConfig``; run_id, series: the run id
            and DICOM SeriesInstanceUID; seed: the noise seed.
    """
    from .. import __version__

    desc = tr.describe()
    tiles = "none" if tr.tile is None else f"{tr.tile} px, overlap {tr.overlap}"
    return {"source": desc["source_domain"], "target": desc["target_domain"], "tau": desc["tau"],
            **{k: desc[k] for k in ("guidance_encode", "guidance_decode", "steps", "solver",
                                    "decode")},
            "seed": seed, "resize": cfg.resize, "run": desc["run"], "run_id": run_id,
            "series_uid": series, "version": __version__, "tiles": tiles}


def previous_run(out: Path, common: dict) -> PreviousRun:
    """The newest run in ``out`` whose manifest records the settings ``common`` (its run id
    and series aside): the run ``translate --resume`` continues.

    Raises:
        MedShiftError: no manifest in ``out``, or none with these settings (naming the first
            setting that differs in the newest one).
    """
    out = Path(out)
    stems = {p.stem for p in out.glob("manifest-*.csv")}  # a torchrun run cut short: its
    stems |= {p.name[1:].split(".rank")[0] for p in out.glob(".manifest-*.rank*.csv")}  # parts
    found = [out / f"{stem}.csv" for stem in sorted(stems, reverse=True)]  # names sort by time
    if not found:
        raise MedShiftError(f"nothing to resume in {str(out)!r}: it holds no manifest-*.csv of "
                            "an earlier `medshift translate`; drop --resume")
    first_diff = None
    for path in found:
        rows = [r for r in read_rows(path) if r.get("input")] if path.is_file() else []
        parts = sorted(path.parent.glob(f".{path.stem}.rank*.csv"))
        for part in parts:
            rows += [r for r in read_rows(part) if r.get("input")]
        if not rows:
            continue
        diff = [(k, rows[0].get(k), v) for k, v in common.items()
                if k not in RUN_IDENTITY and str(rows[0].get(k)) != str(v)]
        if not diff:
            return PreviousRun(path, rows)
        first_diff = first_diff or (path, *diff[0])
    if first_diff is None:
        raise MedShiftError(f"nothing to resume in {str(out)!r}: its manifests list no inputs; "
                            "drop --resume")
    path, k, was, now = first_diff
    raise MedShiftError(f"cannot resume: no earlier run in {str(out)!r} used these settings "
                        f"({path.name} has {k}={was}, this run {k}={now}); pass the same "
                        "settings, or drop --resume and choose another --out")


class Shard:
    """This process's share of a ``torchrun`` translate (one process: everything)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world
        self.enabled = world > 1
        self.is_main = rank == 0

    @classmethod
    def from_env(cls) -> Shard:
        """This process's shard under torchrun (WORLD_SIZE / RANK), else the whole job."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def device(self, dev: torch.device) -> torch.device:
        """The CUDA device of this rank (LOCAL_RANK), or ``dev`` unchanged."""
        if self.enabled and dev.type == "cuda" and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        return dev

    def common(self, value):
        """Rank 0's value on every rank (the run id, the series UID, the batch sizes)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def manifest_path(self, path: Path) -> Path:
        """Where this rank writes its part of the manifest (``path`` itself for one process)."""
        return path if not self.enabled else path.with_name(f".{path.stem}.rank{self.rank}.csv")

    def finish(self, manifest: Manifest, summary,
               order: dict[str, int]) -> None:
        """Rank 0 merges every rank's manifest rows (in input order) into the run's manifest."""
        if not self.enabled:
            return
        import torch.distributed as dist

        counts = torch.tensor([summary.written, summary.skipped, summary.failed])
        dist.all_reduce(counts)
        dist.barrier()
        if self.is_main:
            rows = []
            for r in range(self.world):
                part = summary.manifest.with_name(f".{summary.manifest.stem}.rank{r}.csv")
                if part.is_file():
                    rows += read_rows(part)
            rows.sort(key=lambda r: order.get(r["input"], -1))  # stable: left-out files first
            merged = Manifest(summary.manifest, {})
            merged.rows = rows
            merged.write(summary.manifest)
            for r in range(self.world):
                summary.manifest.with_name(f".{summary.manifest.stem}.rank{r}.csv").unlink(
                    missing_ok=True)
        dist.barrier()
        summary.written, summary.skipped, summary.failed = (int(v) for v in counts)
