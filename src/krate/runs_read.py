"""Reading past runs (list, show) without the launch's modules (runs.py loads them all).

`krate runs list` and `runs show` are light read-only commands; importing runs.py
would load the sandbox spec, the policy package and the supervisor for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from krate import ids
from krate.sandbox import leftovers

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.paths import Paths
    from krate.store.events import Event
    from krate.store.runs import RunRow


def _effective(row: RunRow) -> RunRow:
    if row.status == "running" and not leftovers.alive(row.krate_pid, row.krate_start):
        return row._replace(status="interrupted", reason="krate was killed before the run finished")
    return row


def list_runs(paths: Paths, limit: int | None = None) -> list[RunRow]:
    """Newest first; runs whose krate is gone show as interrupted."""
    from krate.store import open_store
    from krate.store import runs as runs_store

    with open_store(paths, readonly=True) as store:
        return [_effective(r) for r in runs_store.list_runs(store, limit)]


def show_run(paths: Paths, ref: str) -> tuple[RunRow, list[dict[str, Any]], list[Event]]:
    """One run (by id, unique id prefix or `last`), its decisions and its events."""
    from krate.store import events, open_store
    from krate.store import runs as runs_store

    with open_store(paths, readonly=True) as store:
        found = ids.resolve(
            ref,
            "run",
            last=lambda: next(iter(runs_store.list_runs(store, 1)), None),
            exact=lambda run_id: runs_store.get_run(store, run_id),
            prefixed=lambda prefix: runs_store.runs_with_prefix(store, prefix),
            none_yet="no runs yet",
            listing="krate runs list",
        )
        row = _effective(found)
        decisions = runs_store.decisions(store, row.id)
        run_events = events.query(store, run_id=row.id)
    return row, decisions, run_events


def summarize_hosts(decisions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hosts a run contacted, from its decision events: verdicts, connections, bytes."""
    rows: dict[tuple, dict[str, Any]] = {}
    for d in decisions:
        if d.get("area") != "network":
            continue
        key = (d.get("host"), d.get("port"), d.get("verdict"))
        row = rows.setdefault(
            key,
            {"host": key[0], "port": key[1], "verdict": key[2], "connections": 0,
             "bytes_up": 0, "bytes_down": 0},
        )  # fmt: skip
        row["connections"] += d.get("repeats") or 1  # a count event stands for its repeats
        row["bytes_up"] += d.get("bytes_up") or 0
        row["bytes_down"] += d.get("bytes_down") or 0
    return list(rows.values())
