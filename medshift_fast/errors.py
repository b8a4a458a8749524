"""The one exception type for errors a user can cause (bad file, unknown domain, wrong shape...),
and the one warning type for what a user should know but that does not stop the work.

The message must say what is wrong and what to do; the CLI prints an error as one line on stderr
and exits with status 2, a warning (:class:`MedShiftWarning`) as one line on stderr.

**Naming the fix the caller can apply.** A message that advises an option (``--allow-rgb``,
``--skip-bad``, ``--input-bits 12``) must name one the caller accepts: ``medshift train`` has no
``--allow-rgb``, ``FolderDataset`` no ``allow_rgb``. The code that raises asks
:func:`option` how the current caller spells an option; the caller declares what it offers with
:func:`offering` (the CLI: the flags of the command being run; a library entry point such as
``FolderDataset``: its own keyword arguments). The outermost declaration wins, so a library
call inside ``medshift train`` names train's flags. Without any declaration (a direct library
call) the keyword argument is named.

**Config values of the wrong type** (a string where a number belongs, from a hand-edited
config.json or a Python call) are refused naming the field (:func:`check_field_types`), instead
of failing later with "'<' not supported between 'str' and 'int'".
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path


class MedShiftError(Exception):
    """A user-caused error: bad input file, unknown domain, wrong shape, incompatible checkpoint."""


class BadInput(MedShiftError):
    """One input file that cannot be read or is refused.

    Attributes:
        path: the file.
        problem: what is wrong with it, without the remedy (what a ``--skip-bad`` line says).
    """

    def __init__(self, message: str, path, problem: str) -> None:
        super().__init__(message)
        self.path, self.problem = Path(path), problem


class BackendUnavailableError(MedShiftError, RuntimeError):
    """An explicitly requested backend (cuda / triton / cpp) is not available here."""


class MedShiftWarning(UserWarning):
    """Something a user should know that does not stop the work (e.g. a run saved without the
    hashes that verify it); the CLI prints it as one line on stderr."""


def skip_note(exc: BaseException) -> str:
    """What a skipped input's one line says: the file and its problem, without the remedy
    (which would advise the ``--skip-bad`` that is already doing its work)."""
    if isinstance(exc, BadInput):
        return f"{exc.path}: {exc.problem}"
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------- naming the fix
_OFFERED: contextvars.ContextVar[tuple[str, Mapping[str, str]] | None] = \
    contextvars.ContextVar("medshift_offered", default=None)


@contextlib.contextmanager
def offering(options: Mapping[str, str], kind: str = "keyword") -> Iterator[None]:
    """Declare the options the current caller accepts, for the messages raised inside.

    Args:
        options: {option name (a config field / keyword): how it is spelled}, e.g.
            ``{"skip_bad": "--skip-bad"}`` for a command or ``{"skip_bad": "skip_bad"}``.
        kind: "flag" (command-line flags: ``--flag VALUE``) or "keyword" (``name=VALUE``).

    An outer declaration is kept (a command's flags win over the library it calls).
    """
    if _OFFERED.get() is not None:
        yield
        return
    token = _OFFERED.set((kind, dict(options)))
    try:
        yield
    finally:
        _OFFERED.reset(token)


def option(name: str, cli: str = "", py: str = "True", keyword: str | None = None
           ) -> str | None:
    """How the current caller passes option ``name`` (None: the caller has no such option).

    Args:
        name: the option's field / keyword name, e.g. "allow_rgb", "input_bits"; a switch's
            negative flag is "no_<name>" (e.g. "no_baselines": ``--no-baselines``).
        cli: the value as a flag argument ("" for a switch), e.g. "12", "K".
        py: the value as a keyword argument, e.g. "True", "12".
        keyword: the keyword argument's name when it is not ``name`` (e.g. "baselines" for
            "no_baselines", with ``py="False"``).

    Returns:
        e.g. "--input-bits 12" inside a command that has it, "input_bits=12" in a direct
        library call, None inside a command (or library call) that does not take it.
    """
    offered = _OFFERED.get()
    if offered is None:
        return f"{keyword or name}={py}"
    kind, opts = offered
    if kind == "flag":
        return f"{opts[name]} {cli}".strip() if name in opts else None
    key = keyword or name
    return f"{opts[key]}={py}" if key in opts else None


# ----------------------------------------------------------------------- field types
def _allowed(annotation) -> tuple[type, ...] | None:
    """The runtime types an annotation admits (None: not checked)."""
    if isinstance(annotation, str):
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for a in typing.get_args(annotation):
            t = (type(None),) if a is type(None) else _allowed(a)
            if t is None:
                return None
            out += t
        return out
    if origin in (tuple, list):
        return (tuple, list)
    if annotation in (int, float, str, bool):
        return (annotation,)
    return None


def check_field_types(obj) -> None:
    """Refuse a dataclass field whose value has the wrong type, naming the field.

    int fields take whole numbers (not booleans); float fields take ints too (converted to
    float); str, bool and tuple fields their own types (a list becomes a tuple); ``X | None``
    also None. Fields with other annotations are not checked. Frozen dataclasses are updated
    in place (``object.__setattr__``) for the conversions.

    Raises:
        MedShiftError: "<Class>: <field> must be <type>, got <value> (<type>)".
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = _allowed(hints.get(f.name))
        if allowed is None:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, bool) and bool not in allowed:
            ok = False
        elif float in allowed and isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(obj, f.name, float(v))
            ok = True
        elif isinstance(v, float) and int in allowed and float not in allowed:
            ok = math.isfinite(v) and v == int(v)
            if ok:
                object.__setattr__(obj, f.name, int(v))
        else:
            ok = isinstance(v, allowed)
        if isinstance(v, list) and tuple in allowed:
            object.__setattr__(obj, f.name, tuple(v))
        if not ok:
            want = " or ".join(dict.fromkeys(
                "None" if t is type(None) else "a list" if t in (tuple, list) else
                {int: "a whole number", float: "a number", str: "a string",
                 bool: "true or false"}.get(t, t.__name__) for t in allowed))
            raise MedShiftError(f"{type(obj).__name__}: {f.name} must be {want}, got {v!r} "
                                f"({type(v).__name__})")
