"""`krate [COMMAND...] --help` off a terminal, printed from a generated table without Typer.

Off a terminal (a pipe or a file: scripts, agents, `| less`) help is plain text
(cli/plainhelp.py), the same on every call of the same krate, yet rendering it
imports Typer and Click (about 5x `python -c pass`) and the command's module. So
`python -m krate.cli.quickcomplete --write` stores every command's help as Typer's
route prints it off a terminal (cli/help_table.py), and a line that is exactly
`krate [COMMAND...] --help` (or `-h`) is printed from there, after the guard and the
lockdown as on Typer's route. Typer still renders it on a terminal or with
FORCE_COLOR (rich), with a COLUMNS under 80 (Click wraps the usage line to it), and
for any other line. tests/test_cli_polish.py compares every entry with Typer's output
and fails when the table is stale.
"""

from __future__ import annotations

import os
import sys

HELP_FLAGS = ("--help", "-h")
WIDTH = 80  # Click's widest help off a terminal: a larger COLUMNS changes nothing


def on_terminal() -> bool:
    """Whether help goes to a terminal (or colour was asked for): then rich renders it."""
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def text(args: list[str]) -> str | None:
    """The help `args` asks for, as Typer prints it off a terminal, or None (Typer's)."""
    if not args or args[-1] not in HELP_FLAGS or on_terminal():
        return None
    columns = os.environ.get("COLUMNS")
    if columns is not None and not (columns.isdecimal() and int(columns) >= WIDTH):
        return None
    from krate.cli.help_table import HELP

    return HELP.get(tuple(args[:-1]))
