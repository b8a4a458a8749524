"""Versions, the C++/CUDA extension, and which backend every op resolves to here."""

NAME = "env"
HELP = "versions, the extension's state and the backend each op resolves to"


def add_arguments(p) -> None:
    """Add the flags of `medshift env` to its parser ``p``."""
    pass


def run(args) -> int:
    """Run `medshift env` with the parsed flags; returns the exit status."""
    from ..env import report

    print(report())
    return 0
