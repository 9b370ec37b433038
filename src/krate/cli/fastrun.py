"""`krate run` and `krate build` parsed without importing Typer: speed, and the lockdown.

krate run is called in shell loops, and importing the CLI framework is most of its
start-up (the run's overhead over bubblewrap). And both commands start their sandbox
and egress proxy before krate locks itself out of the network, which must happen
before any third-party package (Typer included) is imported: so every line these
commands accept is parsed here, exactly as the Typer command does. Anything else
(--help, an unknown option, a missing value, a --workdir that is not a folder)
returns None: krate locks down first and lets Typer explain. Tests keep these
tables equal to the Typer commands' options and compare both parsers.
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

VALUES = {"--policy": "policy", "--workdir": "workdir", "--image": "image", "--rootfs": "rootfs"}
REPEATED = {
    "--allow-host": "allow_host",
    "--allow-private-host": "allow_private_host",
    "--allow-write": "allow_write",
    "--deny-read": "deny_read",
    "--env": "env",
}
FLAGS = {
    "--no-network": "no_network",
    "--allow-hardlinked-secrets": "allow_hardlinked_secrets",
    "--as-root": "as_root",
    "--allow-broad-workspace": "allow_broad_workspace",
    "--vm": "vm",
    "--verbose": "verbose",
    "-v": "verbose",
    "--quiet": "quiet",
    "-q": "quiet",
}
# `krate build` has run's options and these.
BUILD_VALUES = {**VALUES, "--name": "name", "-n": "name"}
BUILD_REPEATED = {**REPEATED, "--out": "out", "-o": "out", "--input": "input_", "-i": "input_"}
TABLES = {"run": (VALUES, REPEATED, FLAGS), "build": (BUILD_VALUES, BUILD_REPEATED, FLAGS)}


def parse(args: list[str]) -> dict[str, Any] | None:
    """Keyword arguments for `run_workload` / `build_workload`, or None to let Typer handle it.

    Parses as click does for these commands: options up to `--` or the first
    argument that is not an option (everything after it is the command, verbatim),
    `--opt=value`, `-oVALUE` and clustered short flags (`-vo dist`).
    """
    if not args or args[0] not in TABLES:
        return None
    values, repeated, flags = TABLES[args[0]]
    found: dict[str, Any] = {name: None for name in (*values.values(), *repeated.values())}
    found.update({name: False for name in flags.values()})
    found["command"] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            found["command"] = args[i + 1 :] if arg == "--" else args[i:]
            break
        option = _option(arg, flags, {**values, **repeated}, found)
        if option is False:
            return None  # unknown, --help, or a flag given a value: Typer explains
        if option is not None:
            name, value = option
            if value is None:  # the value is the next argument
                i += 1
                if i >= len(args):
                    return None
                value = args[i]
            _store(found, values, repeated, name, value)
        i += 1
    return found if _valid(found) else None


def _option(arg: str, flags: dict, takes: dict, found: dict[str, Any]):
    """Set the flags `arg` names; return the option in it that takes a value, with the
    value written in `arg` (None: the next argument is the value), None when there is
    no such option, or False when `arg` is not a line of these options."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        if name in flags and not eq:
            found[flags[name]] = True
            return None
        return (name, value if eq else None) if name in takes else False
    for j in range(1, len(arg)):  # clustered short options: `-vo dist`, `-odist`
        name = "-" + arg[j]
        if name in takes:
            return name, arg[j + 1 :] or None
        if name not in flags:
            return False
        found[flags[name]] = True
    return None


def _store(found: dict[str, Any], values: dict, repeated: dict, name: str, value: str) -> None:
    if name in values:
        found[values[name]] = value
    else:
        found[repeated[name]] = [*(found[repeated[name]] or []), value]


def _valid(found: dict[str, Any]) -> bool:
    for name in ("workdir", "rootfs"):
        if found[name] is None:
            continue
        if not os.path.isdir(found[name]):
            return False  # Typer's own message names the problem
        found[name] = Path(found[name])
    return True
