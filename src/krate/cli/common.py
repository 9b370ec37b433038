"""Small helpers shared by command modules: paths from the environment, output mode."""

from __future__ import annotations

import os

from krate.errors import UsageError
from krate.paths import Paths


def paths() -> Paths:
    return Paths.from_env(os.environ)


def lock_down() -> None:
    """The deferred network lockdown for run/build/login/push, once their children exist.

    Only when krate runs as the program (cli/main.py installed the guard then): the
    in-process test entry `main(argv)` must leave the calling process alone, since a
    lockdown cannot be undone.
    """
    from krate.netguard import guard, lockdown

    if guard.installed():
        lockdown.apply()


def output_mode(json_: bool, jsonl: bool = False) -> str:
    if json_ and jsonl:
        raise UsageError("choose one of --json and --jsonl")
    return "json" if json_ else "jsonl" if jsonl else "text"
