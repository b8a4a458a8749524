"""Translate image files and folders from one domain to another with a trained run."""

from ._flags import add_config_flags, config_from_args

NAME = "translate"
HELP = "translate images (files or folders) from one domain to another"


def add_arguments(p) -> None:
    """Add the flags of `medshift translate` to its parser ``p``."""
    from ..translate.files import TranslateConfig

    add_config_flags(p, TranslateConfig, skip=("progress",), required=("source", "target"),
                     positional=("inputs",))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    """Run `medshift translate` with the parsed flags; returns the exit status."""
    import os

    from ..export import student_engine  # noqa: F401 - provides --engine onnx (and auto's)
    from ..translate.files import TranslateConfig, translate_files

    summary = translate_files(config_from_args(TranslateConfig, args))
    if int(os.environ.get("RANK", "0") or 0) == 0:  # torchrun: one summary (rank 0 merged)
        print(summary)
    return 0
