"""Versions, the C++/CUDA extension, and which backend every op resolves to here."""

NAME = "env"
HELP = "versions, the extension's state and the backend each op resolves to"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from ..env import report

    print(report())
    return 0
