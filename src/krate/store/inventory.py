"""Read-only SQL for the user's data rights: which tables exist, how many rows, every row.

`krate data where` and `krate data export` discover tables here instead of naming
them, so tables added by later migrations are counted and exported without
changes. Nothing in this module writes.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from krate.store.connection import translate_errors

CREDENTIAL_STORED = "credential.stored"
CREDENTIAL_REMOVED = "credential.removed"
# Keys of a credential event's data that name the keychain account (never the secret).
_ACCOUNT_KEYS = ("account", "registry", "host")


def quote(name: str) -> str:
    """An identifier quoted for SQL (table names come from sqlite_master, never from users)."""
    return '"' + name.replace('"', '""') + '"'


def tables(conn: sqlite3.Connection) -> list[str]:
    """Every table of the database except SQLite's own (sqlite_*), sorted by name."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows]


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})")]


def row_count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {name: row_count(conn, name) for name in tables(conn)}


def event_kind_counts(conn: sqlite3.Connection) -> dict[str, int]:
    if "events" not in tables(conn):
        return {}
    rows = conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")
    return dict(rows.fetchall())


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def iter_rows(conn: sqlite3.Connection, table: str) -> Iterator[dict[str, Any]]:
    """Every row of `table` as a dict (BLOBs as {"base64": ...}), in rowid order when it has one."""
    names = columns(conn, table)
    try:
        cursor = conn.execute(f"SELECT * FROM {quote(table)} ORDER BY rowid")
    except sqlite3.OperationalError:  # a WITHOUT ROWID table
        cursor = conn.execute(f"SELECT * FROM {quote(table)}")
    for row in cursor:
        yield {name: _jsonable(value) for name, value in zip(names, row, strict=True)}


def credential_accounts(conn: sqlite3.Connection) -> list[str]:
    """Keychain account names krate recorded storing and not removing, oldest first.

    Derived from `credential.stored` / `credential.removed` events: krate keeps no
    other list of its keychain entries, and reading the keychain itself could prompt.
    """
    if "events" not in tables(conn):
        return []
    accounts: dict[str, None] = {}
    rows = conn.execute(
        "SELECT kind, data FROM events WHERE kind IN (?, ?) ORDER BY seq",
        (CREDENTIAL_STORED, CREDENTIAL_REMOVED),
    )
    for kind, text in rows:
        try:
            data = json.loads(text)
        except ValueError:
            continue
        account = next((data[k] for k in _ACCOUNT_KEYS if isinstance(data.get(k), str)), None)
        if account is None:
            continue
        if kind == CREDENTIAL_STORED:
            accounts[account] = None
        else:
            accounts.pop(account, None)
    return list(accounts)


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a krate.db that is not the live store (a pending deletion)."""
    with translate_errors(path):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn


def snapshot(conn: sqlite3.Connection) -> None:
    """Start a read transaction so every following read sees one consistent state."""
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def end_snapshot(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("COMMIT")


def database(store: Any, db_path: Path, *, by_kind: bool = True) -> dict[str, Any]:
    """The database as `krate info` and `krate data where` both report it.

    `store` is open read-only; when no database exists yet it is the empty in-memory
    one, whose schema is not the user's: then nothing is counted and the schema
    version is None. The size counts the WAL, shared-memory and head-copy files too.
    `by_kind=False` (info): no counts per kind, whose GROUP BY walks every event
    (~9 ms at 100,000 events), and the events counted as the table's rows.
    """
    from krate.store.headcopy import NAME as HEAD_COPY

    present = store.path is not None
    names = {db_path.name + s: Path(str(db_path) + s) for s in ("", "-wal", "-shm")}
    names[HEAD_COPY] = db_path.with_name(HEAD_COPY)
    sizes = {name: p.stat().st_size for name, p in names.items() if p.exists()}
    kinds = event_kind_counts(store.conn) if present and by_kind else {}
    counts = table_counts(store.conn) if present else {}
    return {
        "path": str(db_path),
        "exists": db_path.exists(),
        "bytes": sum(sizes.values()),
        "files": sizes,
        "schema_version": store.schema_version if present else None,
        "events": sum(kinds.values()) if by_kind else counts.get("events", 0),
        "events_by_kind": kinds,
        "tables": counts,
    }
