"""Every command's --help: a one-line description for every flag and the defaults shown; the
commands that translate share one set of defaults (translator.RECIPE)."""

from __future__ import annotations

import argparse

import pytest

from medshift_fast.cli import COMMANDS, build_parser, main
from medshift_fast.translate import RECIPE


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", [m.NAME for m in COMMANDS])
def test_every_flag_has_a_description_and_its_default(name, capsys):
    p = _subparsers()[name]
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"{name} {a.option_strings or a.dest}: no description"
        flag_only = isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        shown = a.default is not None or a.dest in RECIPE
        if a.option_strings and not flag_only and not a.required and shown:
            assert "default" in a.help, f"{name} {a.option_strings}: default not shown"
    assert main([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: medshift " + name)


@pytest.mark.parametrize("name", ["translate", "evaluate", "export", "demo"])
def test_translating_commands_share_the_recipe_defaults(name):
    p = _subparsers()[name]
    helps = {a.dest: a.help for a in p._actions}
    for k in ("guidance_encode", "guidance_decode", "steps", "solver", "decode", "tau"):
        if k in helps:  # None on the command line = translator.RECIPE (the shared defaults)
            assert f"(default: {RECIPE[k]}" in helps[k], (name, k, helps[k])
    assert p.get_default("guidance_encode") is None


def test_a_usage_error_is_one_line_and_exit_2(capsys):
    assert main(["translate", "--tau", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tau" in err[0]
