"""The ``medshift`` command line (also ``python -m medshift_fast``).

One module per subcommand (``cli/<command>.py``): each names its frozen config dataclass, whose
fields become the flags (``cli/_flags.py``: type, one-line description and default from the
dataclass), and calls one library function; no logic here. Every command module is imported
when the parser is built, so a broken one fails loudly instead of vanishing from ``--help``.
User errors (``MedShiftError``) become one line on stderr and exit status 2; a
``MedShiftWarning`` is one line on stderr and the work goes on. A message that
advises an option names the flag of the command that was run (``errors.offering``: the
command's own flags), never one that only another command has. Flags are never abbreviated:
``--input`` is not taken for ``--input-bits``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import MedShiftError, MedShiftWarning, offering
from . import (
    demo,
    distill,
    env,
    evaluate,
    export,
    simulate,
    train,
    train_autoencoder,
    translate,
    utility,
)

COMMANDS = (env, simulate, train, train_autoencoder, distill, translate, evaluate, utility, export,
            demo)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **k) -> None:
        k.setdefault("allow_abbrev", False)  # "--input scans/" must not become --input-bits
        super().__init__(*a, **k)

    def error(self, message: str):  # usage errors: one line, exit 2 (argparse's own code)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `medshift` parser: one subparser per command module."""
    from .. import __version__

    parser = _Parser(
        prog="medshift",
        description="Unpaired X-ray domain translation with one class-conditional flow-matching / "
        "Schrödinger-bridge model (MedShift).",
    )
    parser.add_argument("--version", action="version", version=f"medshift_fast {__version__}",
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMANDS:
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__.strip())
        mod.add_arguments(p)
        p.set_defaults(func=mod.run, flags=command_flags(p))
    return parser


def command_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    """{option name (dest): its flag} of a command's parser (the fixes its messages may name);
    a switch's negative flag as "no_<dest>" (``--no-baselines``)."""
    out = {}
    for a in p._actions:
        if a.option_strings and a.dest not in ("help", "flags", "func"):
            out[a.dest] = a.option_strings[0]
            neg = [o for o in a.option_strings if o.startswith("--no-")]
            if neg:
                out[f"no_{a.dest}"] = neg[0]
    return out


def _one_line_warning(command: str):
    """``warnings.showwarning`` for a command: a MedShiftWarning is one line on stderr."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MedShiftWarning):
            print(f"medshift {command}: warning: {' '.join(str(message).split())}",
                  file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run the `medshift` command line; user errors: one line on stderr, exit 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line on stderr)
        return int(exc.code or 0)
    try:
        if args.command != "env":  # `medshift env` shows a bad preference instead
            from .._backend import check_preference

            check_preference()
        with offering(args.flags, kind="flag"), warnings.catch_warnings():
            warnings.simplefilter("default", MedShiftWarning)  # once per place it is raised
            warnings.showwarning = _one_line_warning(args.command)
            rc = args.func(args)
    except MedShiftError as exc:
        msg = " ".join(str(exc).split())
        print(f"medshift {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the command may say how to continue
        why = " ".join(str(exc).split())
        print(f"medshift {args.command}: interrupted{': ' + why if why else ''}",
              file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
