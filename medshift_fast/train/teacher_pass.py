"""The teacher pass of ``medshift distill``: the teacher's translations a student learns from (and
is validated against), computed once -- with a plan, progress, and a resumable partial save.

Before the first translation :meth:`TeacherPass.run` prints its plan (pairs, tau values, the
number of teacher translations and network calls), then measures the first job and prints the
estimated time of the whole pass, then shows a progress bar (or, with ``--no-progress``, one
line per stage). The translations done so far are saved to ``RUN/teacher_cache.partial
.safetensors`` after the first job, then at most every ``save_every`` seconds, and when SIGINT /
SIGTERM arrives; a rerun with the same settings (``--resume``, or the same command) continues
from there: the jobs are a deterministic list and each job is translated on its own, so the
result equals an uninterrupted pass's, bit for bit.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import load_safetensors, save_safetensors

__all__ = ["PARTIAL", "TeacherJob", "TeacherPass", "say"]

PARTIAL = "teacher_cache.partial.safetensors"


def say(msg: str, bar=None) -> None:
    """One line of ``medshift distill`` on stderr, at once (above ``bar``, a tqdm bar)."""
    line = f"medshift distill: {' '.join(msg.split())}"
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


@dataclass
class TeacherJob:
    """One teacher translation call: images ``z`` (B, C, H, W) in model space, one pair, one tau.

    Attributes:
        kind: "cache" (a training target) or "val" (a validation target).
        z: the source images; src, tgt: domain labels; tau: the translation time.
    """

    kind: str
    z: torch.Tensor
    src: int
    tgt: int
    tau: float


class TeacherInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM during the teacher pass; what was done is saved."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (like SIGINT) while the pass runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class TeacherPass:
    """Run ``translate`` over ``jobs`` with a plan, progress and a resumable partial save.

    Args:
        jobs: the deterministic list of jobs.
        translate: ``translate(z, src, tgt, tau) -> (B, C, H, W)`` float CPU tensor.
        out: the run folder (the partial file lives there).
        meta: what the results depend on (teacher weights, settings, data, ...): a partial
            file with other metadata is not continued.
        writer: this process writes the partial file (rank 0).
        progress: show a progress bar (else one line per stage).
        calls: network calls of one translation (for the plan).
        save_every: seconds between partial saves.
    """

    def __init__(self, jobs: list[TeacherJob],
                 translate: Callable[[torch.Tensor, int, int, float], torch.Tensor], out: Path,
                 meta: dict[str, str], writer: bool = True, progress: bool = True,
                 calls: int | None = None, save_every: float = 30.0) -> None:
        self.jobs, self.translate, self.out = jobs, translate, Path(out)
        self.meta = {**meta, "jobs": str(len(jobs)),
                     "images": str(sum(int(j.z.shape[0]) for j in jobs))}
        self.writer, self.progress, self.calls, self.save_every = writer, progress, calls, \
            save_every
        self.seconds = 0.0  # of the whole pass, earlier interrupted parts included

    @property
    def path(self) -> Path:
        """The partial file."""
        return self.out / PARTIAL

    def _load_partial(self) -> list[torch.Tensor]:
        """The outputs of the jobs an interrupted pass finished (empty when there is none)."""
        if not self.path.is_file():
            return []
        tensors, saved = load_safetensors(self.path, "partial teacher cache")
        if any(saved.get(k) != v for k, v in self.meta.items()):
            return []  # another teacher / settings / data: start again
        done, t = int(saved.get("done", 0)), tensors.get("t")
        sizes = [int(j.z.shape[0]) for j in self.jobs[:done]]
        if t is None or int(t.shape[0]) != sum(sizes):
            return []
        self.seconds = float(saved.get("seconds", 0.0))
        return list(torch.split(t, sizes)) if sizes else []

    def _save(self, outs: list[torch.Tensor]) -> None:
        if not self.writer or not outs:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.path, {"t": torch.cat(outs)},
                         {**self.meta, "done": str(len(outs)), "seconds": f"{self.seconds:.1f}"})

    def run(self, describe: str) -> list[torch.Tensor]:
        """Translate every job (continuing a partial pass); returns one output per job.

        Args:
            describe: the plan's first part (pairs and tau values) for the plan line.

        Raises:
            TeacherInterrupted: SIGINT / SIGTERM; the jobs done are saved for a rerun.
        """
        from tqdm.auto import tqdm

        outs = self._load_partial()
        n_img = [int(j.z.shape[0]) for j in self.jobs]
        total, done = sum(n_img), sum(n_img[:len(outs)])
        kinds = {k: sum(n for j, n in zip(self.jobs, n_img) if j.kind == k) for k in
                 ("cache", "val")}
        calls = f", {self.calls} network calls each" if self.calls else ""
        say(f"plan: {describe}; teacher pass: {total} translations ({kinds['cache']} for the "
            f"cache, {kinds['val']} for validation){calls}"
            + (f"; continuing after {done} done by an interrupted run" if outs else ""))
        bar = tqdm(total=total, initial=done, desc="teacher translations", unit="img",
                   disable=not self.progress, dynamic_ncols=True)
        t_save, start = time.perf_counter(), len(outs)
        try:
            with _sigterm_as_interrupt():
                for k in range(start, len(self.jobs)):
                    j = self.jobs[k]
                    t0 = time.perf_counter()
                    outs.append(self.translate(j.z, j.src, j.tgt, j.tau))
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    bar.update(n_img[k])
                    left = total - sum(n_img[:k + 1])
                    if k == start:  # the measured first job: the estimate, a first save
                        per = dt / n_img[k]
                        say(f"first teacher translation: {per:.2f} s per image; teacher pass "
                            f"~{_minutes(per * left)} left ({left} translations)", bar)
                        self._save(outs)
                        t_save = time.perf_counter()
                    elif time.perf_counter() - t_save > self.save_every:
                        self._save(outs)
                        t_save = time.perf_counter()
        except KeyboardInterrupt:
            bar.close()
            self._save(outs)
            n = sum(n_img[:len(outs)])
            raise TeacherInterrupted(
                f"in the teacher pass after {n} of {total} translations (saved to {self.path}); "
                "continue with the same command and --resume") from None
        bar.close()
        if not self.progress:
            say(f"teacher pass done: {total} translations in {self.seconds:.0f} s")
        return outs

    def finish(self) -> None:
        """Remove the partial file (the complete cache is written)."""
        if self.writer:
            self.path.unlink(missing_ok=True)


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"
