"""SQL for the `runs` index table: one row per `krate run`, written with its events.

`run.started` inserts the row and `run.finished` completes it, each in the same
transaction as its event, so the table never disagrees with the chain. Decision
counts are read from the chain itself (`policy.decision` events carrying the
run id), so decisions recorded later by other parts (the egress proxy) count too.
Only this module knows the table's columns. Never stores environment values or
workload output: the caller hands in a redacted argv.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from krate.store.connection import translate_errors

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Event, Writer

DECISION = "policy.decision"
_COLUMNS = (
    "id, started, finished, duration_s, status, exit_code, reason, argv, cwd, workspace, "
    "backend, policy_name, policy_hash, krate_pid, krate_start"
)
# An event with `repeats: K` (coalesced denials, egress/recorder.py) stands for K decisions.
_WEIGHT = "sum(coalesce(json_extract(e.data, '$.repeats'), 1))"
_COUNTS = (
    f"(SELECT {_WEIGHT} FROM events e WHERE e.run_id = runs.id AND e.kind = 'policy.decision' "
    "AND json_extract(e.data, '$.verdict') = 'allow'), "
    f"(SELECT {_WEIGHT} FROM events e WHERE e.run_id = runs.id AND e.kind = 'policy.decision' "
    "AND json_extract(e.data, '$.verdict') != 'allow')"
)


class RunRow(NamedTuple):
    id: str
    started: str
    finished: str | None
    duration_s: float | None
    status: str
    exit_code: int | None
    reason: str | None
    argv: list[str]
    cwd: str
    workspace: str
    backend: str
    policy_name: str | None
    policy_hash: str | None
    krate_pid: int | None
    krate_start: str | None
    allowed: int = 0
    denied: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["decisions"] = {"allowed": self.allowed, "denied": self.denied}
        del out["allowed"], out["denied"]
        return out


def insert_started(writer: Writer, run_id: str, event: Event, row: dict[str, Any]) -> None:
    """The row for a run that just started (same transaction as its `run.started` event)."""
    writer.store.conn.execute(
        "INSERT INTO runs (id, started, status, argv, cwd, workspace, backend, policy_name, "
        "policy_hash, krate_pid, krate_start) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            event.ts,
            json.dumps(row["argv"], ensure_ascii=False),
            row["cwd"],
            row["workspace"],
            row["backend"],
            row.get("policy_name"),
            row.get("policy_hash"),
            row.get("krate_pid"),
            row.get("krate_start"),
        ),
    )


def update_finished(
    writer: Writer,
    run_id: str,
    event: Event,
    *,
    status: str,
    exit_code: int | None,
    reason: str | None,
    duration_s: float | None,
) -> None:
    """Complete the row (same transaction as its `run.finished` / `run.interrupted` event)."""
    writer.store.conn.execute(
        "UPDATE runs SET finished = ?, duration_s = ?, status = ?, exit_code = ?, reason = ? "
        "WHERE id = ?",
        (event.ts, duration_s, status, exit_code, reason, run_id),
    )


def _row(values: tuple) -> RunRow:
    (
        run_id, started, finished, duration, status, code, reason, argv, cwd, workspace,
        backend, policy_name, policy_hash, pid, start, allowed, denied,
    ) = values  # fmt: skip
    return RunRow(
        run_id, started, finished, duration, status, code, reason, json.loads(argv), cwd,
        workspace, backend, policy_name, policy_hash, pid, start, allowed or 0, denied or 0,
    )  # fmt: skip


def list_runs(store: Store, limit: int | None = None) -> list[RunRow]:
    """Newest first."""
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs ORDER BY started DESC, id DESC"
    params: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with translate_errors(store.path):
        return [_row(r) for r in store.conn.execute(sql, params).fetchall()]


def running(store: Store) -> list[RunRow]:
    """Runs whose `run.finished` is missing (still running, or their krate was killed)."""
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE status = 'running' ORDER BY started"
    with translate_errors(store.path):
        return [_row(r) for r in store.conn.execute(sql).fetchall()]


def find(store: Store, ref: str) -> list[RunRow]:
    """Runs whose id is `ref` or starts with it (`last` means the newest run)."""
    if ref == "last":
        return list_runs(store, 1)
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2"
    low = ref.lower()
    with translate_errors(store.path):
        exact = store.conn.execute(
            f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE id = ?", (low,)
        ).fetchall()
        if exact:
            return [_row(exact[0])]
        rows = store.conn.execute(sql, (low, low + "\U0010ffff")).fetchall()
    return [_row(r) for r in rows]


def decisions(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's `policy.decision` events' data with seq and time, oldest first."""
    with translate_errors(store.path):
        rows = store.conn.execute(
            "SELECT seq, ts, data FROM events WHERE run_id = ? AND kind = ? ORDER BY seq",
            (run_id, DECISION),
        ).fetchall()
    return [{"seq": seq, "ts": ts, **json.loads(data)} for seq, ts, data in rows]
