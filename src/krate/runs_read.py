"""Reading past runs (list, show) without the launch's modules (runs.py loads them all).

`krate runs list` and `runs show` are light read-only commands; importing runs.py
would load the sandbox spec, the policy package and the supervisor for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krate import ids
from krate.sandbox import leftovers

if TYPE_CHECKING:
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
