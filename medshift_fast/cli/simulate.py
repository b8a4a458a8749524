"""Write the built-in simulated five-domain skull X-ray dataset (pixel-aligned views)."""

from ._flags import add_config_flags, config_from_args

NAME = "simulate"
HELP = "write a simulated five-domain skull X-ray dataset (pixel-aligned views)"


def add_arguments(p) -> None:
    """Add the flags of `medshift simulate` to its parser ``p``."""
    from ..data.simulator import SimulateOptions

    add_config_flags(p, SimulateOptions, skip=("progress",))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    """Run `medshift simulate` with the parsed flags; returns the exit status."""
    from ..data.simulator import SimulateOptions, simulate_options

    opts = config_from_args(SimulateOptions, args)
    out, n = simulate_options(opts)
    print(f"wrote {n} images to {out} and their labels to labels/ (manifest.csv, simulator.json)")
    return 0
