"""Command-line flags generated from a frozen config dataclass: one flag per field.

``--field-name`` per field; the type comes from the field's annotation; the help text is the
field's whole entry in the class docstring's ``Attributes:`` section (every sentence and
continuation line; never cut at an abbreviation such as "e.g.") plus its default; booleans get
``--flag / --no-flag``; tuples are comma-separated. ``config_from_args`` builds the config back
from the parsed namespace, so a command module only names its dataclass and calls the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from ..errors import MedShiftError

_SCALARS = {"int": int, "float": float, "str": str}


def _attributes(doc: str) -> dict[str, str]:
    """{name: description} of a Google-style ``Attributes:`` section."""
    out: dict[str, str] = {}
    if "Attributes:" not in doc:
        return out
    names: list[str] = []
    text: list[str] = []
    entries: list[tuple[list[str], list[str]]] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        m = re.match(r"^ {4,8}([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if m and not line.startswith(" " * 12):
            names, text = [n.strip() for n in m.group(1).split(",")], [m.group(2)]
            entries.append((names, text))
        elif re.match(r"^\s*[A-Z][a-z]+:\s*$", line):  # the next section
            break
        elif line.strip() and names:
            text.append(line.strip())
    for names, text in entries:
        desc = " ".join(" ".join(text).split()).replace("``", "").rstrip(".")
        out.update(dict.fromkeys(names, desc))
    return out


def field_help(cls) -> dict[str, str]:
    """{field: its whole description} from the docstrings' ``Attributes:`` sections (of the
    class and its bases; the class's own entry wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_attributes(klass.__doc__ or ""))
    return out


def _kind(annotation: str) -> tuple[str, Any]:
    """("bool" | "scalar" | "tuple", element type) of a field annotation string."""
    a = annotation.replace(" | None", "").replace("None | ", "").strip()
    if a.startswith("Optional[") and a.endswith("]"):
        a = a[len("Optional["):-1]
    if a == "bool":
        return "bool", bool
    if a.startswith("tuple"):
        inner = a[a.index("[") + 1:].split(",")[0].strip() if "[" in a else "str"
        return "tuple", _SCALARS.get(inner, str)
    if a in _SCALARS:
        return "scalar", _SCALARS[a]
    return "scalar", str


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(v) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) or "()"
    return str(v)


def add_config_flags(p: argparse.ArgumentParser, cls, *, skip=(), required=(),
                     none_defaults: bool = False, extra_help: dict[str, str] | None = None,
                     aliases: dict[str, list[str]] | None = None, positional=()) -> None:
    """Add one flag per field of the dataclass ``cls``.

    Args:
        p: the (sub)parser.
        cls: a dataclass; every field without a default must be in ``required``/``positional``.
        skip: fields that get no flag.
        required: fields whose flag is required.
        none_defaults: parse "not given" as None (``config_from_args(given_only=True)`` then
            keeps only the flags given; the help still shows the dataclass default).
        extra_help: help overrides by field name.
        aliases: extra option strings by field name.
        positional: fields taken as positional arguments (nargs="+" for tuples).
    """
    helps = {**field_help(cls), **(extra_help or {})}
    shown_defaults = getattr(cls, "SHOWN_DEFAULTS", {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        has_default = f.default is not dataclasses.MISSING or \
            f.default_factory is not dataclasses.MISSING
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if has_default else None)
        kind, typ = _kind(str(f.type))
        desc = helps.get(f.name, "")
        if f.name in positional:
            kw = {"help": desc.replace("%", "%%"), "metavar": f.name.upper()}
            if kind == "tuple":
                kw["nargs"] = "+"
            p.add_argument(f.name, **kw)
            continue
        if default is None and f.name in shown_defaults:  # None = the run's own default
            shown = f" (default: {_show(shown_defaults[f.name])}, or a distilled run's own)"
        else:
            shown = f" (default: {_show(default)})" if has_default and default is not None else ""
        # argparse %-formats help strings: a literal % in a description must be doubled
        kw: dict[str, Any] = {"dest": f.name,
                              "help": (desc + shown).strip().replace("%", "%%") or None,
                              "default": None if none_defaults else default}
        names = [_flag(f.name), *((aliases or {}).get(f.name, []))]
        if kind == "bool":
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if kind == "tuple":
            kw["type"] = _tuple_parser(typ, f.name)
            kw["metavar"] = "A,B,..."
        else:
            kw["type"] = _scalar_parser(typ, f.name)
        if f.name in required or not has_default:
            kw["required"] = True
            kw.pop("default")
        p.add_argument(*names, **kw)


def _scalar_parser(typ, name: str):
    def parse(s: str):
        try:
            return typ(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_flag(name)} expects {typ.__name__}, got {s!r}") from None
    parse.__name__ = typ.__name__
    return parse


def _tuple_parser(typ, name: str):
    def parse(s: str):
        try:
            return tuple(typ(v.strip()) for v in s.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_flag(name)} expects comma-separated "
                                             f"{typ.__name__} values, got {s!r}") from None
    parse.__name__ = "list"
    return parse


def config_from_args(cls, args: argparse.Namespace, given_only: bool = False, **fixed):
    """The config ``cls`` from parsed flags (``given_only``: a dict of the flags given only)."""
    vals = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        if isinstance(v, list):
            v = tuple(v)
        if given_only and v is None:
            continue
        vals[f.name] = v
    vals.update(fixed)
    if given_only:
        return vals
    try:
        return cls(**vals)
    except TypeError as exc:  # a required field without a flag: a programming error
        raise MedShiftError(f"bad options for {cls.__name__}: {exc}") from exc
