"""Distil a run's whole translation into a one-step student (``medshift distill``)."""

NAME = "distill"
HELP = "distil a run's translation into a one-network-call student (not built yet)"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from ..errors import MedShiftError

    raise MedShiftError("medshift distill is not available yet")
