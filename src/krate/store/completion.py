"""Run ids and image names for shell completion, read from krate.db with the standard library.

Every TAB runs krate, so this must stay cheap and must never change anything: no
sqlite-utils, no migrations, never creates the database or its -wal/-shm files (when
no -wal file exists the main file holds every committed row and is opened
`immutable`; otherwise read-only). Any problem (no database, corrupt, locked, an
older schema) means no suggestions, never an error: a TAB must not print one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

TIMEOUT_S = 0.2


def _rows(db_path: Path, sql: str, params: tuple) -> list[tuple]:
    """Rows of one read-only query, or none when the store is absent, locked or broken: a
    TAB press never waits and never fails."""
    if not db_path.is_file():
        return []
    wal = Path(f"{db_path}-wal").exists()
    mode = "mode=ro" if wal else "immutable=1"
    try:
        conn = sqlite3.connect(f"{db_path.absolute().as_uri()}?{mode}", uri=True, timeout=TIMEOUT_S)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def run_ids(db_path: Path, prefix: str = "", limit: int = 50) -> list[tuple[str, str]]:
    """(id, "started status") of the newest runs whose id starts with `prefix`."""
    rows = _rows(
        db_path,
        "SELECT id, started, status FROM runs WHERE substr(id, 1, ?) = ? "
        "ORDER BY started DESC LIMIT ?",
        (len(prefix), prefix, limit),
    )
    return [
        (rid, f"{(started or '')[:19].replace('T', ' ')} {status}") for rid, started, status in rows
    ]


def image_refs(db_path: Path, prefix: str = "", limit: int = 50) -> list[tuple[str, str]]:
    """(name, short config digest) of the images whose name starts with `prefix`."""
    rows = _rows(
        db_path,
        "SELECT ref, config_digest FROM images WHERE substr(ref, 1, ?) = ? ORDER BY ref LIMIT ?",
        (len(prefix), prefix, limit),
    )
    return [(ref, (config or "")[:19]) for ref, config in rows]
