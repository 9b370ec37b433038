"""Index tables against the chain: every row must say what its events say, and every event
that makes a row must have it.

The chain is the source of truth; the index tables (runs, builds, artifacts, pushes,
policy_trust) only make queries fast, so a row written, edited or deleted behind krate's
back must not go unnoticed. Each table's check lives beside its SQL; this module lists
them. Decisions and network egress have no tables of their own: they are read from the
chain. A migration that adds an index table adds its check here (a test fails otherwise).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from krate.store import artifacts, images, pushes, runs, trust

Check = Callable[[sqlite3.Connection], tuple[int, "str | None"]]

# In this order: a missing build is reported as such, not as its artifacts' problem.
CHECKS: dict[str, Check] = {
    "policy_trust": trust.crosscheck,
    "runs": runs.crosscheck,
    "builds": artifacts.crosscheck_builds,
    "artifacts": artifacts.crosscheck_artifacts,
    "pushes": pushes.crosscheck,
    "images": images.crosscheck,
}
# Tables that are not indexes of events: the chain itself, its head, the schema record.
NOT_INDEXES = frozenset({"events", "chain_head", "_sqlite_migrations"})


def check(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    """({table: rows checked}, the first disagreement, or None). Tables absent are skipped."""
    present = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    counts: dict[str, int] = {}
    for table, run in CHECKS.items():
        if table not in present:
            continue
        counts[table], problem = run(conn)
        if problem is not None:
            return counts, problem
    return counts, None
