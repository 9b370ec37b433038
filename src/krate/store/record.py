"""`krate audit verify`: the whole record, not only the chain, in one consistent read.

1. SQLite's `PRAGMA integrity_check`: every page and every index against its table.
   The chain walk reads only the events table, while trust lookups and the index
   checks go through indexes, so a damaged or doctored index would otherwise pass.
   (quick_check skips the index comparison: 0.37 s against 1.27 s on a million
   events, and the index comparison is the part that matters here.)
2. The chain walk (events.verify): edits, deletions, insertions, reordering, cut tail.
3. The head copy beside the database (store/headcopy.py), read BEFORE the chain so
   that a concurrent append can only make the chain longer than the copy, never
   shorter: an emptied, replaced, truncated or rolled-back store.
4. Every index row against its events (store/crosscheck.py).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from krate.store import crosscheck, events, headcopy
from krate.store.connection import DAMAGED_FIX, read_snapshot, translate_errors

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Verification

MAX_PROBLEMS = 20


def integrity(store: Store) -> list[str]:
    """SQLite's own findings (at most MAX_PROBLEMS); [] when the file is sound."""
    if store.path is None:
        return []
    try:
        rows = store.conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    # One row may hold several findings, one a line, under a "*** in database main ***" title.
    found = [line for row in rows if row[0] != "ok" for line in str(row[0]).splitlines()]
    return [line for line in found if line.strip() and not line.startswith("***")]


def verify(store: Store) -> Verification:
    """Check the database file, the chain, the head copy and the index tables, in that order;
    the first failure is reported (`problem` names which)."""
    copy = headcopy.read(store.head_copy) if store.head_copy else headcopy.ABSENT
    damaged = integrity(store)
    if damaged:
        more = f" (+{len(damaged) - 1} more)" if len(damaged) > 1 else ""
        reason = f"{store.path} is damaged: {damaged[0]}{more}; {DAMAGED_FIX}"
        return events.Verification(
            False, 0, "", None, reason, problem="database", database=damaged[0]
        )
    with translate_errors(store.path), read_snapshot(store.conn):
        chain = events.verify(store)
        head = events.head(store)
        compared = headcopy.compare(store.conn, copy, head, chain.first_seq, store.head_copy)
        copy_info = compared.to_dict(store.head_copy) if store.head_copy else None
        result = chain._replace(database="ok", head_copy=copy_info)
        if not chain.ok:
            return result._replace(problem="chain")
        if not compared.ok:
            first_bad = compared.copy.seq if compared.copy else None
            if compared.state == "ahead":
                first_bad = head.seq + 1
            return result._replace(
                ok=False, problem="head_copy", first_bad_seq=first_bad, reason=compared.reason
            )
        counts, disagreement = crosscheck.check(store.conn)
        result = result._replace(indexes=counts)
        if disagreement is not None:
            return result._replace(
                ok=False,
                problem="index",
                reason=f"index row disagrees with the chain: {disagreement}",
            )
    note = "" if compared.state in ("matches",) or head.seq == 0 else compared.reason
    return result._replace(note=note)
