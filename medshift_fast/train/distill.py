"""``medshift distill``: a teacher run's whole translation in one (or two) network calls.

The student (``models.student``) starts from the teacher's U-Net and is trained by the shared loop
(``train.trainer``: progress, checkpoints, exact resume, EMA, the non-finite guard). The methods
(``DistillConfig.method``):

* ``oneshot`` (default, train/distill_task.py): regression, with the pseudo-Huber loss, onto the
  teacher's OWN translations of the training images -- every requested domain pair,
  ``taus_per_image`` times per image and pair with tau drawn uniformly from [tau_min, tau_max] --
  computed once with the teacher's settings and cached in RUN/teacher_cache.safetensors (reused
  on --resume). Training may use random crops of the (source, translation) pairs.
* ``meanflow`` (train/distill_task.py, train/meanflow.py): the average velocity u(z, s, e, y) of
  the teacher's guided field, trained with the MeanFlow identity at points of the teacher's
  paths: no translation cache, any tau and pair from one model, two calls per translation.
* ``adversarial`` (train/adversarial.py): the ``oneshot`` network, started from a regression
  student (``--init``), against a discriminator on real target-domain images, with the
  teacher's translation as a low-pass anchor and a structure term against the source.

Validation (oneshot, meanflow): the mean squared difference between the EMA student's and the
teacher's translations of held-out (val split) images at tau_min, the mid point and tau_max
(adversarial: the NPS distance to the target domains).
"""

from __future__ import annotations

import os
from pathlib import Path

from .adversarial import AdversarialTask
from .distill_config import DISTILL_METHODS, DistillConfig
from .distill_task import DistillTask, pairs_of
from .noise_terms import dose_pairs_of
from .teacher_pass import say
from .trainer import run_training

__all__ = ["DISTILL_METHODS", "DistillConfig", "DistillTask", "distill"]


def distill(cfg: DistillConfig, progress: bool = True) -> Path:
    """Distil ``cfg.teacher`` into ``cfg.out``; returns the student's run directory.

    Talks from its first second: a line before the teacher and the data load, the plan and the
    estimated time of the teacher pass before it runs, then its progress (train/teacher_pass.py).
    ``resume`` continues an interrupted teacher pass, or training from the last checkpoint.
    """
    from .flow import check_fresh_out

    check_fresh_out(cfg)
    if cfg.teacher and (Path(cfg.teacher) / "config.json").is_file():  # before any work
        from ..run import read_run_config

        domains = tuple(read_run_config(cfg.teacher).get("domains", ()))
        dose_pairs_of(cfg, pairs_of(cfg.pairs, domains), domains)
    if cfg.resume == "last" and _no_checkpoint(Path(cfg.out)):
        # interrupted before the first checkpoint: the teacher pass continues from its
        # partial save (or the complete cache is reused) and training starts at step 0
        cfg = cfg.replace(resume=None)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        say(f"distilling {cfg.teacher} into {cfg.out} (method {cfg.method}, {cfg.steps} steps "
            f"of batch {cfg.batch_size}): loading the teacher and the data")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)  # the run folder exists from the start
    if cfg.method == "adversarial":
        return run_training(cfg, AdversarialTask(cfg, progress), progress)
    return run_training(cfg, DistillTask(cfg, progress), progress)


def _no_checkpoint(out: Path) -> bool:
    """``out`` holds no training checkpoint (nothing but a teacher cache, if anything)."""
    from ..run import CONFIG, STATE

    return not any((p / CONFIG).is_file() and (p / STATE).is_file()
                   for p in (out, out.with_name(f"{out.name}.old")))
