"""Database integrity for `krate doctor`: SQLite's own `PRAGMA quick_check`, read-only.

Uses the standard library's sqlite3 rather than sqlite-utils so that a damaged
file is examined, not refused at open. Never writes, never migrates, never
creates the database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Integrity:
    exists: bool
    ok: bool
    problems: tuple[str, ...] = ()


def quick_check(db_path: Path, timeout_s: float = 5.0) -> Integrity:
    """Run `PRAGMA quick_check` on `db_path`; problems as SQLite words them (at most 20)."""
    if not db_path.exists():
        return Integrity(exists=False, ok=True)
    # With no -wal file the main file holds everything: `immutable` then creates no -shm.
    mode = "mode=ro" if Path(f"{db_path}-wal").exists() else "immutable=1"
    try:
        conn = sqlite3.connect(f"{db_path.absolute().as_uri()}?{mode}", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        return Integrity(exists=True, ok=False, problems=(str(exc),))
    try:
        rows = conn.execute(f"PRAGMA quick_check({MAX_PROBLEMS})").fetchall()
    except sqlite3.Error as exc:
        return Integrity(exists=True, ok=False, problems=(str(exc),))
    finally:
        conn.close()
    problems = tuple(str(row[0]) for row in rows if row[0] != "ok")
    return Integrity(exists=True, ok=not problems, problems=problems)
