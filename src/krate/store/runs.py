"""SQL for the `runs` index table: one row per `krate run`, written with its events.

`run.started` inserts the row and `run.finished` completes it, each in the same
transaction as its event, so the table never disagrees with the chain. Decision
counts are read from the chain itself (`policy.decision` events carrying the
run id), so decisions recorded later by other parts (the egress proxy) count too.
Only this module knows the table's columns. Never stores environment values or
workload output: the caller hands in a redacted argv.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3

from krate.records import NamedTuple
from krate.store.connection import query
from krate.store.events import data_of

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

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
    return [_row(r) for r in query(store, sql, limit=limit)]


def running(store: Store) -> list[RunRow]:
    """Runs whose `run.finished` is missing (still running, or their krate was killed)."""
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE status = 'running' ORDER BY started"
    return [_row(r) for r in query(store, sql)]


def get_run(store: Store, run_id: str) -> RunRow | None:
    """The run with exactly this id."""
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE id = ?"
    rows = query(store, sql, (run_id,))
    return _row(rows[0]) if rows else None


def runs_with_prefix(store: Store, prefix: str, limit: int = 11) -> list[RunRow]:
    """Runs whose id starts with `prefix`, in id order."""
    sql = f"SELECT {_COLUMNS}, {_COUNTS} FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"
    return [_row(r) for r in query(store, sql, (prefix, prefix + "\U0010ffff", limit))]


def decisions(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's `policy.decision` events' data with seq and time, oldest first."""
    sql = "SELECT seq, ts, data FROM events WHERE run_id = ? AND kind = ? ORDER BY seq"
    rows = query(store, sql, (run_id, DECISION))
    return [{"seq": seq, "ts": ts, **json.loads(data)} for seq, ts, data in rows]


FINISHES = ("run.finished", "run.interrupted")
_CHECKED = (
    "id, started, finished, duration_s, status, exit_code, reason, argv, cwd, workspace, "
    "backend, policy_name, policy_hash, krate_pid"
)


# Rows that may disagree with their events, found by SQLite (0.4 s for 100,000 runs, against
# 1.8 s parsing every event in Python); `_exact` then names the problem.
_SUSPECTS = (
    """
SELECT r.id FROM runs r
LEFT JOIN events s ON s.run_id = r.id AND s.kind = 'run.started'
LEFT JOIN events f ON f.seq = (
    SELECT max(x.seq) FROM events x WHERE x.run_id = r.id AND x.kind IN (?, ?))
WHERE s.seq IS NULL
   OR s.ts IS NOT r.started
   OR json_extract(s.data, '$.argv') IS NOT json(r.argv)
   OR json_extract(s.data, '$.cwd') IS NOT r.cwd
   OR json_extract(s.data, '$.workspace') IS NOT r.workspace
   OR json_extract(s.data, '$.backend') IS NOT r.backend
   OR json_extract(s.data, '$.policy.name') IS NOT r.policy_name
   OR json_extract(s.data, '$.policy.hash') IS NOT r.policy_hash
   OR json_extract(s.data, '$.krate_pid') IS NOT r.krate_pid
   OR (f.seq IS NULL AND (r.status IS NOT 'running' OR r.finished IS NOT NULL
                          OR r.exit_code IS NOT NULL))
   OR (f.seq IS NOT NULL AND (f.ts IS NOT r.finished
        OR json_extract(f.data, '$.status') IS NOT r.status
        OR json_extract(f.data, '$.exit_code') IS NOT r.exit_code
        OR json_extract(f.data, '$.reason') IS NOT r.reason
        OR json_extract(f.data, '$.duration_s') IS NOT r.duration_s))
LIMIT 1
""",
    "SELECT seq FROM events e WHERE kind = 'run.started' "
    "AND NOT EXISTS (SELECT 1 FROM runs WHERE id = e.run_id) LIMIT 1",
    "SELECT run_id FROM events WHERE kind = 'run.started' "
    "GROUP BY run_id HAVING count(*) > 1 LIMIT 1",
)


def crosscheck(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: (rows checked, the first row that disagrees with its events, or None).

    A row must say what its `run.started` event and its newest `run.finished` /
    `run.interrupted` event say (krate_start is not in the events and is not checked);
    every `run.started` event must have its row, and no run starts twice.
    """
    n = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    try:
        suspect = any(
            conn.execute(sql, FINISHES if "?" in sql else ()).fetchone() for sql in _SUSPECTS
        )
    except sqlite3.OperationalError:  # malformed JSON somewhere: the exact check says where
        suspect = True
    return _exact(conn) if suspect else (n, None)


def _exact(conn: sqlite3.Connection) -> tuple[int, str | None]:
    started: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for seq, ts, run_id, data in conn.execute(
        "SELECT seq, ts, run_id, data FROM events WHERE kind = 'run.started' ORDER BY seq"
    ):
        if run_id in started or run_id is None:
            return 0, f"runs: event {seq} starts run {run_id} again"
        started[run_id] = (seq, ts, data_of(data))
    finished: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for seq, ts, run_id, data in conn.execute(
        "SELECT seq, ts, run_id, data FROM events WHERE kind IN (?, ?) ORDER BY seq", FINISHES
    ):
        finished[run_id] = (seq, ts, data_of(data))
    n = 0
    for values in conn.execute(f"SELECT {_CHECKED} FROM runs ORDER BY id"):
        n += 1
        run_id = values[0]
        if run_id not in started:
            return n, f"runs row {run_id} has no run.started event"
        problem = _disagreement(values, started.pop(run_id), finished.get(run_id))
        if problem:
            return n, f"runs row {run_id}: {problem}"
    for run_id, (seq, _, _) in started.items():
        return n, f"runs has no row for run {run_id} (started by event {seq})"
    return n, None


def _disagreement(values: tuple, start: tuple, finish: tuple | None) -> str | None:
    (
        _, started, finished, duration, status, code, reason, argv, cwd, workspace, backend,
        policy_name, policy_hash, pid,
    ) = values  # fmt: skip
    seq, ts, data = start
    policy = data.get("policy") or {}
    expected = {
        "started": ts,
        "argv": data.get("argv"),
        "cwd": data.get("cwd"),
        "workspace": data.get("workspace"),
        "backend": data.get("backend"),
        "policy_name": policy.get("name"),
        "policy_hash": policy.get("hash"),
        "krate_pid": data.get("krate_pid"),
    }
    with contextlib.suppress(TypeError, ValueError):
        argv = json.loads(argv)
    actual = {
        "started": started, "argv": argv, "cwd": cwd, "workspace": workspace, "backend": backend,
        "policy_name": policy_name, "policy_hash": policy_hash, "krate_pid": pid,
    }  # fmt: skip
    for name, value in expected.items():
        if actual[name] != value:
            return f"{name} is not what event {seq} (run.started) says"
    actual = {
        "finished": finished, "status": status, "exit_code": code, "reason": reason,
        "duration_s": duration,
    }  # fmt: skip
    if finish is None:
        expected = {"finished": None, "status": "running", "exit_code": None}
        for name, value in expected.items():
            if actual[name] != value:
                return f"{name} is {actual[name]!r}, but no event finished the run"
        return None
    seq, ts, data = finish
    expected = {
        "finished": ts,
        "status": data.get("status"),
        "exit_code": data.get("exit_code"),
        "reason": data.get("reason"),
        "duration_s": data.get("duration_s"),
    }
    for name, value in expected.items():
        if actual[name] != value:
            return f"{name} is {actual[name]!r}, but event {seq} says {value!r}"
    return None
