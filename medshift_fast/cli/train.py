"""Train a class-conditional SB flow-matching model (multi-GPU: torchrun ... train).

Every flag defaults to "not given", so that ``--resume`` starts from the checkpoint's own
configuration and applies only the flags given (a flag that changes the model or the math of a
step is then refused, naming the field); the help shows the defaults of a new run.
"""

import os

from ._flags import add_config_flags, config_from_args

NAME = "train"
HELP = ("train a class-conditional SB flow-matching model "
        "(multi-GPU: torchrun --nproc_per_node=P -m medshift_fast train ...)")


def add_arguments(p) -> None:
    """Add the flags of `medshift train` to its parser ``p``."""
    from ..train.config import TrainConfig

    add_config_flags(p, TrainConfig, skip=("resume",), required=("out",), none_defaults=True,
                     aliases={"image_size": ["--size"]})
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue exactly: alone = the run in --out, or a checkpoint folder "
                   "(RUN/checkpoints/step_N, RUN/best)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run `medshift train` with the parsed flags; returns the exit status."""
    from ..train.config import TrainConfig
    from ..train.flow import config_for_run, train

    cfg = config_for_run(config_from_args(TrainConfig, args, given_only=True), args.resume)
    out = train(cfg, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {out}")
    return 0
