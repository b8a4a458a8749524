"""Simulate -> train -> evaluate -> export on this machine; writes OUT/report.md."""

from ._flags import add_config_flags, config_from_args

NAME = "demo"
HELP = "the whole job on the built-in simulated data: simulate, train, evaluate, export"


def add_arguments(p) -> None:
    """Add the flags of `medshift demo` to its parser ``p``."""
    from ..demo import DemoConfig

    add_config_flags(p, DemoConfig, skip=("progress",))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    """Run `medshift demo` with the parsed flags; returns the exit status."""
    from ..demo import DemoConfig, run_demo

    path = run_demo(config_from_args(DemoConfig, args))
    print(f"demo report: {path}")
    return 0
