"""The CLI's command tree as data: which commands exist, and which one an argv names.

The proof derives its command list from here so that a command added to the CLI
is covered (or fails the proof) without anyone editing a list. Works on the
click objects typer builds; imports neither.
"""

from __future__ import annotations

from typing import Any


def leaf_commands(root: Any) -> list[tuple[str, ...]]:
    """Every runnable command as a path of names, e.g. ("audit", "head"), in CLI order."""
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append(path)
            return
        for name in sorted(subcommands):
            sub = subcommands[name]
            if getattr(sub, "hidden", False):
                continue
            walk(sub, (*path, name))

    walk(root, ())
    return found


def command_path(root: Any, args: list[str]) -> tuple[str, ...]:
    """The registered command names at the start of `args` (never an argument value)."""
    path: list[str] = []
    command = root
    for token in args:
        if token == "--":
            break
        if token.startswith("-"):
            continue
        subcommands = getattr(command, "commands", None)
        if not subcommands or token not in subcommands:
            break
        path.append(token)
        command = subcommands[token]
    return tuple(path)
