"""Every ``--help`` renders the help text it was given, word for word.

Typer renders help with Rich, which reads ``[...]`` as markup: ``pip install
'buildflow[ray]'`` would print as ``pip install 'buildflow'``. The CLI escapes every help
string (``buildflow.cli._common.plain_help``); this test renders each command's help on a
wide terminal and looks for each string as written (whitespace collapsed, since long
strings wrap inside the table).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from buildflow.cli import cli

_BOX = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛]")


def _flat(text: str) -> str:
    return " ".join(_BOX.sub(" ", text).split())


def _given_help(command: Any) -> list[str]:
    """The help strings as the code wrote them (the command's first paragraph before any
    ``\\f``, each option's and argument's help)."""
    texts = []
    if command.help:
        texts.append(inspect.cleandoc(command.help).partition("\f")[0])
    texts += [p.help for p in command.params if getattr(p, "help", None)]
    return texts


def _commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(cli)
    return dict(group.commands)  # read directly: not through get_command, which escapes


@pytest.mark.parametrize("name", ["", *sorted(_commands())])
def test_help_renders_each_help_string_verbatim(name: str) -> None:
    given = _given_help(typer.main.get_command(cli)) if not name else _given_help(_commands()[name])
    assert given, f"{name or 'buildflow'} has no help text"
    result = CliRunner().invoke(
        cli, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"}, terminal_width=200
    )
    assert result.exit_code == 0, result.output
    rendered = _flat(result.output)
    missing = [text for text in given if _flat(text) not in rendered]
    assert not missing, f"`buildflow {name} --help` does not show, as written: {missing}\n{result.output}"


def test_markup_in_help_is_shown_not_applied() -> None:
    """The case that was broken: the extra's name in brackets survives."""
    result = CliRunner().invoke(cli, ["run", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "pip install 'buildflow[ray]'" in _flat(result.output)


def _envvars(command: Any) -> list[str]:
    names = []
    for p in command.params:
        envvar = getattr(p, "envvar", None)
        names += [envvar] if isinstance(envvar, str) else list(envvar or [])
    return names


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_at_80_columns_shows_every_variable_name_whole(name: str) -> None:
    """Issue 21 item 7: at 80 columns `run --help` printed ``BUILDFLOW_UI_TOKE…``."""
    result = CliRunner().invoke(cli, [name, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines())
    flat = _flat(result.output)
    missing = [v for v in _envvars(_commands()[name]) if v not in flat]
    assert not missing, f"`buildflow {name} --help` at 80 columns cuts {missing}:\n{result.output}"
