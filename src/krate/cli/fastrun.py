"""`krate run`'s fast path: its options parsed without importing Typer.

krate run is called in shell loops, and importing the CLI framework is most of its
start-up (the run's overhead over bubblewrap). This parser handles the common form,
`krate run [OPTIONS] -- CMD...`, exactly as the Typer command does; anything else
(--help, an unknown option, `--opt=value`, a command without `--`, a --workdir that
is not a folder) returns None and goes through Typer, which explains it. A test
keeps these tables equal to the Typer command's options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VALUES = {"--policy": "policy", "--workdir": "workdir"}
REPEATED = {
    "--allow-host": "allow_host",
    "--allow-write": "allow_write",
    "--deny-read": "deny_read",
    "--env": "env",
}
FLAGS = {
    "--no-network": "no_network",
    "--allow-hardlinked-secrets": "allow_hardlinked_secrets",
    "--as-root": "as_root",
    "--allow-broad-workspace": "allow_broad_workspace",
    "--verbose": "verbose",
    "-v": "verbose",
}


def parse(args: list[str]) -> dict[str, Any] | None:
    """Keyword arguments for `run_workload`, or None to let Typer handle the line."""
    if args[:1] != ["run"]:
        return None
    found: dict[str, Any] = {name: None for name in (*VALUES.values(), *REPEATED.values())}
    found.update({name: False for name in FLAGS.values()})
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            found["command"] = args[i + 1 :]
            return found if _valid(found) else None
        if arg in FLAGS:
            found[FLAGS[arg]] = True
        elif (arg in VALUES or arg in REPEATED) and i + 1 < len(args):
            value = args[i + 1]
            i += 1
            if arg in VALUES:
                found[VALUES[arg]] = value
            else:
                found[REPEATED[arg]] = [*(found[REPEATED[arg]] or []), value]
        else:
            return None
        i += 1
    return None


def _valid(found: dict[str, Any]) -> bool:
    if found["workdir"] is None:
        return True
    if not os.path.isdir(found["workdir"]):
        return False  # Typer's own message names the problem
    found["workdir"] = Path(found["workdir"])
    return True
