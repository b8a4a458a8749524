"""The bookkeeping of one ``medshift translate`` run: its manifest, and its torchrun shards.

Every run writes its own manifest, ``manifest-<run id>.csv`` (UTC time + 4 random hex digits), so
a second run into the same folder -- or into a dataset root -- never replaces another run's (or
the dataset's) ``manifest.csv``. Under ``torchrun`` each rank writes a hidden partial manifest
and rank 0 merges them, in input order, at the end (``Shard.finish``).
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import torch

from ..fileio import atomic_write_text

__all__ = ["Manifest", "Shard", "new_run_id"]


def new_run_id() -> str:
    """A run id for the manifest's name: UTC time and 4 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(2).hex()


class Manifest:
    """The rows of one run's manifest (rewritten atomically after every batch)."""

    COLS = ["input", "output", "status", "reason", "source", "target", "tau", "guidance_encode",
            "guidance_decode", "steps", "solver", "decode", "seed", "working_size", "scale",
            "tiles", "resize", "intensity", "hallucination_count", "hallucination_area_px",
            "hallucination_max_z", "run", "run_id", "series_uid", "version"]

    def __init__(self, path: Path, common: dict) -> None:
        self.path, self.common, self.rows = path, common, []

    def add(self, inp, out, status: str, reason: str = "", **per_image) -> None:
        """Record one input's outcome (status, reason and per-image fields)."""
        self.rows.append({**self.common, "input": str(inp),
                          "output": "" if out is None else str(out), "status": status,
                          "reason": " ".join(str(reason).split()), **per_image})

    def write(self, path: Path | None = None) -> None:
        """Write the rows as CSV, atomically (default: the manifest's own path)."""
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=self.COLS, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(self.rows)
        atomic_write_text(path or self.path, buf.getvalue())



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
                    with open(part, newline="") as fh:
                        rows += list(csv.DictReader(fh))
            rows.sort(key=lambda r: order.get(r["input"], -1))  # stable: left-out files first
            merged = Manifest(summary.manifest, {})
            merged.rows = rows
            merged.write(summary.manifest)
            for r in range(self.world):
                summary.manifest.with_name(f".{summary.manifest.stem}.rank{r}.csv").unlink(
                    missing_ok=True)
        dist.barrier()
        summary.written, summary.skipped, summary.failed = (int(v) for v in counts)
