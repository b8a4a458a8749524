"""Train a small network on synthetic views under each sim-to-real condition (as is, translated
by a run, histogram matching + noise + blur, domain randomisation, translated + randomised, real
labels) and score it on real test views of new subjects (docs/utility.md)."""

from ._flags import add_config_flags, config_from_args

NAME = "utility"
HELP = "sim-to-real utility: does translated synthetic data train models for real images?"


def add_arguments(p) -> None:
    """Add the flags of `medshift utility` to its parser ``p``."""
    from ..eval.utility import UtilityConfig

    add_config_flags(p, UtilityConfig, skip=("progress",))
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (one line per stage)")


def run(args) -> int:
    """Run `medshift utility` with the parsed flags; returns the exit status."""
    from ..eval.utility import UtilityConfig, utility

    cfg = config_from_args(UtilityConfig, args)
    res = utility(cfg)
    for line in res.verdicts:
        print(f"  {line}")
    return 0
