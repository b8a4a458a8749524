"""Distil a teacher run's whole translation into a one-call student (``medshift distill``)."""

from ._flags import add_config_flags, config_from_args

NAME = "distill"
HELP = "distil a run's translation into a student: one network call, no guidance at run time"


def add_arguments(p) -> None:
    """Add the flags of `medshift distill` to its parser ``p``."""
    from ..train.distill import DistillConfig

    add_config_flags(p, DistillConfig, required=("teacher", "out"), skip=("resume",))
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue an interrupted run exactly: its teacher pass (from the "
                   "partial save) or its training (alone = the run in --out, or a checkpoint "
                   "folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run `medshift distill` with the parsed flags; returns the exit status."""
    from ..train.distill import DistillConfig, distill

    out = distill(config_from_args(DistillConfig, args), progress=not args.no_progress)
    print(f"student written to {out}")
    return 0
