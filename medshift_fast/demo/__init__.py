"""``medshift demo``: the whole job on the built-in simulated data, with a measurable result.

* ``pipeline`` -- simulate, train a short run, evaluate the shipped runs, export, write the
  report (:func:`run_demo`, :class:`DemoConfig`);
* ``eval``     -- the evaluation data (new subjects), the per-pair evaluations, the verdicts and
  the report's sections;
* ``native``   -- a real radiograph translated at its native size, in a child process.
"""

from __future__ import annotations

from .pipeline import DEFAULT_STUDENT, PAIRS, PRETRAINED, DemoConfig, data_fingerprint, run_demo

__all__ = ["DEFAULT_STUDENT", "PAIRS", "PRETRAINED", "DemoConfig", "data_fingerprint",
           "run_demo"]
