"""The wall-clock budget of a training run (``--minutes``), kept by the Trainer.

The clock starts when the Trainer is built (data loading counts) and carries over a resume: the
seconds spent so far travel in the training state (``elapsed_s``, ``loop_s``). The loop asks
:meth:`WallClock.late` after every step whether a next step like it would end past the budget,
and stops then, as at its last step. :meth:`WallClock.position` puts the LR schedule on the
clock: the fraction of the loop time available that has been used, so warm-up and cosine decay
fit the budget instead of being cut off mid-way.
"""

from __future__ import annotations

import time

__all__ = ["WallClock"]


def _now() -> float:
    """The budget's clock (one place, so that tests can drive it)."""
    return time.monotonic()


class WallClock:
    """Seconds spent against a budget of ``minutes`` (None: no budget, never late).

    Args:
        minutes: the budget in minutes, or None.
    """

    def __init__(self, minutes: float | None) -> None:
        self._t0 = _now()
        self.budget_s = None if minutes is None else float(minutes) * 60.0
        self.elapsed_before = 0.0  # from the checkpoint resumed
        self.loop_before = 0.0
        self._loop_t0: float | None = None

    @staticmethod
    def now() -> float:
        """The clock's current reading in seconds."""
        return _now()

    @property
    def enabled(self) -> bool:
        return self.budget_s is not None

    def elapsed(self) -> float:
        """Seconds of the budget spent: earlier sessions of the run plus this one."""
        return self.elapsed_before + _now() - self._t0

    def loop_seconds(self) -> float:
        """Seconds spent in the training loop, earlier sessions included."""
        if self._loop_t0 is None:
            return self.loop_before
        return self.loop_before + _now() - self._loop_t0

    def start_loop(self) -> bool:
        """The loop starts now; returns True when the budget is already spent."""
        self._loop_t0 = _now()
        return self.budget_s is not None and self.elapsed() >= self.budget_s

    def position(self) -> float:
        """Fraction in [0, 1] of the loop time available used so far (0 before the loop)."""
        if self._loop_t0 is None or self.budget_s is None:
            return 0.0
        avail = self.loop_before + self.budget_s - self.elapsed_before - \
            (self._loop_t0 - self._t0)
        return min(1.0, self.loop_seconds() / max(avail, 1e-9))

    def late(self, step_start: float) -> bool:
        """Would a next step as long as the one started at ``step_start`` (a
        :meth:`now`) end past the budget?"""
        if self.budget_s is None:
            return False
        return self.elapsed() + (_now() - step_start) >= self.budget_s

    def state(self) -> dict[str, float]:
        """What a checkpoint records of the clock."""
        return {"elapsed_s": self.elapsed(), "loop_s": self.loop_seconds()}

    def load(self, st: dict) -> None:
        """Continue the clock of a resumed checkpoint's training state."""
        self.elapsed_before = float(st.get("elapsed_s", 0.0))
        self.loop_before = float(st.get("loop_s", 0.0))
