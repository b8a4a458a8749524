"""Score a run's translations on the test split against baselines (report.md, metrics.csv)."""

from ._flags import add_config_flags, config_from_args

NAME = "evaluate"
HELP = "score translations on the test split against baselines"


def add_arguments(p) -> None:
    """Add the flags of `medshift evaluate` to its parser ``p``."""
    from ..eval.evaluate import EvalConfig

    add_config_flags(p, EvalConfig, skip=("progress", "grid_rows"), required=("source", "target"))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    """Run `medshift evaluate` with the parsed flags; returns the exit status."""
    from ..eval.evaluate import EvalConfig, evaluate

    cfg = config_from_args(EvalConfig, args)
    evaluate(cfg)
    print(f"report written to {cfg.out}/report.md")
    return 0
