"""Export a trained translator (ONNX / AOTInductor / TensorRT) and verify it against PyTorch.

Exit status: 0 ok, 1 when the verification finds the engine beyond the tolerance, 2 on a user
error. TensorRT is untested here (it cannot be installed on the development machines).
"""

import sys

from ._flags import add_config_flags, config_from_args

NAME = "export"
HELP = "export a trained translator (ONNX / AOTInductor / TensorRT) and verify it"


def add_arguments(p) -> None:
    """Add the flags of `medshift export` to its parser ``p``."""
    from ..export.api import ExportConfig

    add_config_flags(p, ExportConfig)


def run(args) -> int:
    """Run `medshift export` with the parsed flags; returns the exit status."""
    from ..export.api import ExportConfig, export_run

    report = export_run(config_from_args(ExportConfig, args))
    if not report.ok:
        print(f"medshift export: verification failed: the engine differs from eager PyTorch by "
              f"{report.verify.max_abs:.3g} > {report.verify.tolerance:g} (files kept for "
              "inspection)", file=sys.stderr)
        return 1
    return 0
