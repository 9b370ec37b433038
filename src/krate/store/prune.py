"""SQL for `krate data prune`: pick the oldest events to drop, drop them from every table, and
leave no readable copy in the database file.

What is pruned is a prefix of the event chain (so the rest still verifies from a
checkpoint), never cutting a run in half. Rows of other tables go with it by
per-table rules: tables are discovered, not listed, and a table with a `run_id`
column loses the rows of pruned runs unless a rule in `RULES` says otherwise.
Features whose tables need something else register a rule there (one line).
Rows that referred, by foreign key, to a pruned row are removed as well.

Every delete happens inside the caller's write transaction; nothing here commits.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from krate.store.inventory import columns, quote, tables

PRUNED_RUNS = "temp.krate_pruned_runs"
# Tables whose rows are never pruned: the chain's own bookkeeping and the schema record.
# (`events` is pruned, but by prefix, below, not by a rule.)
NEVER = frozenset({"events", "chain_head", "_sqlite_migrations"})
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass(frozen=True)
class Scope:
    """What one prune removes: events up to `last_seq`, the runs listed in PRUNED_RUNS,
    and, for time-based rules, anything older than `cutoff` (UTC, events' ts format)."""

    last_seq: int
    cutoff: str


Rule = Callable[[sqlite3.Connection, str, Scope], int]


def by_run(conn: sqlite3.Connection, table: str, scope: Scope) -> int:
    """Rows of pruned runs: those whose `run_id` (or, in a `runs` table, `id`) is one."""
    cols = columns(conn, table)
    column = "run_id" if "run_id" in cols else "id" if table == "runs" and "id" in cols else None
    if column is None:
        return 0
    sql = f"DELETE FROM {quote(table)} WHERE {quote(column)} IN (SELECT run_id FROM {PRUNED_RUNS})"
    return conn.execute(sql).rowcount


def by_time(column: str) -> Rule:
    """A rule for tables not tied to runs: rows whose `column` is older than the cutoff."""

    def rule(conn: sqlite3.Connection, table: str, scope: Scope) -> int:
        sql = f"DELETE FROM {quote(table)} WHERE {quote(column)} < ?"
        return conn.execute(sql, (scope.cutoff,)).rowcount

    return rule


def by_event(kind: str, key: str, column: str) -> Rule:
    """A rule for index rows not tied to a run: rows whose own event (of `kind`, naming the
    row's `column` in its data's `key`) is pruned, so no row outlives the event it indexes."""

    def rule(conn: sqlite3.Connection, table: str, scope: Scope) -> int:
        sql = (
            f"DELETE FROM {quote(table)} WHERE {quote(column)} IN "
            "(SELECT json_extract(data, ?) FROM events WHERE kind = ? AND seq <= ?)"
        )
        return conn.execute(sql, (f"$.{key}", kind, scope.last_seq)).rowcount

    return rule


def keep(conn: sqlite3.Connection, table: str, scope: Scope) -> int:
    """A rule for tables that prune must never touch (e.g. trust records: pruning them
    would silently revoke trust)."""
    return 0


# Per-table prune rules: table name -> rule. Tables not named here use `by_run`.
# Later features add their line, e.g. `"policy_trust": keep` or `"egress": by_time("ts")`.
RULES: dict[str, Rule] = {
    "policy_trust": keep,  # pruning trust would silently change what policies allow
    "pushes": by_event("push.finished", "push_id", "push_id"),
    "images": keep,  # an image outlives its event: privacy/prune.py records it again
}


def prepare(conn: sqlite3.Connection) -> None:
    """Before the delete transaction: zero deleted content, keep temporary data in memory
    (VACUUM's copy and the pruned-run list never land in a temporary file)."""
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA temp_store = MEMORY")


def bounds(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    return conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()


def prefix_end(conn: sqlite3.Connection, cutoff: str) -> int:
    """The last seq to prune: events before the first one at or after `cutoff`, shortened so
    that no run keeps some events and loses others. 0 when nothing is to be pruned."""
    lo, hi = bounds(conn)
    if lo is None:
        return 0
    first_kept = conn.execute("SELECT min(seq) FROM events WHERE ts >= ?", (cutoff,)).fetchone()[0]
    last = hi if first_kept is None else first_kept - 1
    while last >= lo:
        split = conn.execute(
            "SELECT min(seq) FROM events WHERE seq <= ? AND run_id IN "
            "(SELECT run_id FROM events WHERE seq > ? AND run_id IS NOT NULL)",
            (last, last),
        ).fetchone()[0]
        if split is None:
            break
        last = split - 1
    return last if last >= lo else 0


@dataclass(frozen=True)
class Plan:
    first_seq: int
    last_seq: int
    events: int
    runs: int
    oldest: str | None
    newest: str | None
    prev_hash: str


def plan(conn: sqlite3.Connection, cutoff: str) -> Plan | None:
    """What pruning before `cutoff` would remove; None when nothing."""
    last = prefix_end(conn, cutoff)
    if not last:
        return None
    lo, _ = bounds(conn)
    events, runs, oldest, newest = conn.execute(
        "SELECT count(*), count(DISTINCT run_id), min(ts), max(ts) FROM events WHERE seq <= ?",
        (last,),
    ).fetchone()
    prev_hash = conn.execute("SELECT hash FROM events WHERE seq = ?", (last,)).fetchone()[0]
    return Plan(lo, last, events, runs, oldest, newest, prev_hash)


def delete_prefix(conn: sqlite3.Connection, scope: Scope) -> dict[str, int]:
    """Delete events 1..last_seq and every row tied to them; rows deleted per table.

    Must run inside the caller's write transaction. Foreign keys are checked at the
    end rather than per statement, so tables can be visited in any order.
    """
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {PRUNED_RUNS.split('.')[1]} (run_id TEXT PRIMARY KEY)"
    )
    conn.execute(f"DELETE FROM {PRUNED_RUNS}")
    conn.execute(
        f"INSERT INTO {PRUNED_RUNS} SELECT DISTINCT run_id FROM events "
        "WHERE seq <= ? AND run_id IS NOT NULL",
        (scope.last_seq,),
    )
    deleted: dict[str, int] = {}
    for table in tables(conn):
        if table in NEVER:
            continue
        n = RULES.get(table, by_run)(conn, table, scope)
        if n:
            deleted[table] = n
    deleted["events"] = conn.execute(
        "DELETE FROM events WHERE seq <= ?", (scope.last_seq,)
    ).rowcount
    for table, n in _remove_orphans(conn, set(deleted)).items():
        deleted[table] = deleted.get(table, 0) + n
    conn.execute(f"DROP TABLE {PRUNED_RUNS}")
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    if violations:
        from krate.errors import StoreError

        table, _, parent, _ = violations[0]
        raise StoreError(
            f"cannot prune: rows of {table} still refer to pruned rows of {parent}; "
            "nothing was pruned (report this: the table needs a prune rule)"
        )
    return {name: n for name, n in deleted.items() if n}


def _remove_orphans(conn: sqlite3.Connection, touched: set[str]) -> dict[str, int]:
    """Delete rows whose single-column foreign key pointed at a row that was just deleted."""
    removed: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for child in tables(conn):
            if child in NEVER:
                continue
            keys: dict[int, list[tuple]] = {}
            for fk in conn.execute(f"PRAGMA foreign_key_list({quote(child)})"):
                keys.setdefault(fk[0], []).append(fk)
            for parts in keys.values():
                if len(parts) != 1 or parts[0][2] not in touched:
                    continue
                _, _, parent, source, target, *_ = parts[0]
                target = target or _primary_key(conn, parent)
                n = conn.execute(
                    f"DELETE FROM {quote(child)} WHERE {quote(source)} IS NOT NULL AND "
                    f"{quote(source)} NOT IN (SELECT {quote(target)} FROM {quote(parent)})"
                ).rowcount
                if n:
                    removed[child] = removed.get(child, 0) + n
                    touched.add(child)
                    changed = True
    return removed


def _primary_key(conn: sqlite3.Connection, table: str) -> str:
    pk = [row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})") if row[5]]
    return pk[0] if len(pk) == 1 else "rowid"


def referenced_digests(conn: sqlite3.Connection) -> set[str] | None:
    """Every SHA-256 hex digest named by any row of `artifacts` (or `images`); None without
    an `artifacts` table.

    Any column may hold the digest, bare or as `sha256:<hex>`; the artifact store's
    schema is its own business.
    """
    if "artifacts" not in tables(conn):
        return None
    found: set[str] = set()
    # Image blobs (config, manifest, layers) share the store: the images rows name them.
    for table in ("artifacts", "images") if "images" in tables(conn) else ("artifacts",):
        for row in conn.execute(f"SELECT * FROM {table}"):
            for value in row:
                if isinstance(value, str):
                    found.update(_HEX64.findall(value.lower()))
    return found


def checkpoint_truncate(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file and empty it; False when a reader kept it busy."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


def compact(conn: sqlite3.Connection) -> bool:
    """Rebuild the file without free pages, then empty the WAL; False if a reader got in the way."""
    conn.execute("VACUUM")
    return checkpoint_truncate(conn)
