"""Small helpers shared by command modules: paths from the environment, output mode."""

from __future__ import annotations

import os
import sys

from krate.errors import KrateError, UsageError
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
    started()


def started() -> None:
    """Start-up is over (the command begins, or the workload runs): collect garbage again.

    cli/main.py turns the cycle collector off while krate starts; a long run, a large
    export or a proof must not accumulate cyclic garbage for its whole life. What start-up
    made (modules, classes, the command tree) lives until exit: frozen, the collector
    never walks it again (enabling alone would walk it all at the next allocation).
    """
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def take_transport():
    """The transport started at entry (once), or None (the in-process test entry)."""
    from krate.registry import early

    try:
        proc = early.take()
    except OSError as exc:
        raise KrateError(f"cannot start the registry transport: {exc.strerror or exc}") from exc
    if proc is None:
        return None
    from krate.registry.client import Transport

    return Transport(proc)


def abandon_transport() -> None:
    """End a transport no command took (a usage error, --help...): it exits on EOF."""
    if "krate.registry.early" not in sys.modules:
        return  # nothing started one (every run and build): not even the module is loaded
    try:
        transport = take_transport()
    except Exception:
        return  # it never started: nothing to end
    if transport is not None:
        transport.abandon()


def print_stored(fetch, limit: int | None, json_: bool, as_json, headers, cells) -> None:
    """The newest `limit` rows `fetch(store, limit)` reads from the store, as `print_rows`."""
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        found = fetch(store, limit)
    print_rows(found, json_, as_json, headers, cells)


def print_rows(rows, json_: bool, as_json, headers: list[str], cells) -> None:
    """A listing: `as_json(row)` of each row as one JSON array, or a table of `cells(row)`."""
    from krate import render

    if json_:
        render.print_json([as_json(row) for row in rows])
    else:
        render.table(headers, (cells(row) for row in rows))


def output_mode(json_: bool, jsonl: bool = False) -> str:
    if json_ and jsonl:
        raise UsageError("choose one of --json and --jsonl")
    return "json" if json_ else "jsonl" if jsonl else "text"
