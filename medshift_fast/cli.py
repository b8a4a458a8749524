"""The ``medshift`` command line (also ``python -m medshift_fast``).

Subcommands map flags 1:1 onto config fields and call library functions; no logic here.
Each feature area registers its own subcommands from ``<area>/cli.py`` (a ``register(sub)``
function that adds a parser and sets ``func``), so areas can grow independently.
User errors (MedShiftError) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MedShiftError

# Modules that contribute subcommands; each exposes register(subparsers).
_COMMAND_MODULES = (
    "medshift_fast.core_cli",
    "medshift_fast.data.cli",
    "medshift_fast.train.cli",
    "medshift_fast.eval.cli",
    "medshift_fast.export.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medshift",
        description="Unpaired X-ray domain translation with one class-conditional flow-matching / "
        "Schrödinger-bridge model (MedShift).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # this area has no commands yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MedShiftError as exc:
        msg = " ".join(str(exc).split())
        print(f"medshift {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medshift {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
