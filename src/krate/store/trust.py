"""SQL for trusted project policy files: the `policy_trust` index and its events.

Each change appends `policy.trusted` / `policy.untrusted` to the event chain and
updates the index in the same transaction, so the record and the index never
disagree. Only the file's path and SHA-256 are kept, never its contents.

A row is honoured only when the chain backs it (`checked_files`): the event it
cites exists, is intact (its hash, its link to the event before, not past the
recorded head), trusts exactly this path and hash, and is the newest trust event
for the path. A row written behind krate's back widens nothing. This costs a few
indexed lookups, never a walk of the chain (it is on `krate run`'s path).
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from krate.records import NamedTuple
from krate.store.connection import translate_errors

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Event, Writer

TRUSTED = "policy.trusted"
UNTRUSTED = "policy.untrusted"


class TrustRecord(NamedTuple):
    path: str
    sha256: str
    trusted_at: str
    seq: int

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "trusted_at": self.trusted_at,
            "seq": self.seq,
        }


def _has_table(store: Store) -> bool:
    row = store.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'policy_trust'"
    ).fetchone()
    return row is not None


def trusted_files(store: Store) -> dict[str, str]:
    """{path: sha256} of every trusted file the chain backs (empty when nothing is trusted)."""
    return checked_files(store)[0]


def checked_files(store: Store) -> tuple[dict[str, str], list[str]]:
    """({path: sha256} the chain backs, one note per row it does not back)."""
    with translate_errors(store.path):
        if not _has_table(store):
            return {}, []
        trusted, notes = {}, []
        for row, problem in backing(store.conn):
            if problem is None:
                trusted[row.path] = row.sha256
            else:
                notes.append(
                    f"{row.path}: trust not backed by the record ({problem}); treated as "
                    "untrusted (see `krate audit verify`; `krate policy trust` records it again)"
                )
        return trusted, notes


_BACKING = """
SELECT t.path, t.sha256, t.trusted_at, t.seq,
       e.ts, e.kind, e.run_id, e.data, e.prev_hash, e.hash, p.hash, h.seq
FROM policy_trust t
LEFT JOIN events e ON e.seq = t.seq
LEFT JOIN events p ON p.seq = t.seq - 1
LEFT JOIN chain_head h ON h.id = 1
ORDER BY t.path
"""


def newest_events(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    """path -> (seq, kind) of the newest trust event naming it (through the kind index)."""
    rows = conn.execute(
        "SELECT seq, kind, data FROM events WHERE kind IN (?, ?) ORDER BY seq", (TRUSTED, UNTRUSTED)
    )
    newest: dict[str, tuple[int, str]] = {}
    for seq, kind, data in rows:
        path = _field(data, "path")
        if isinstance(path, str):
            newest[path] = (seq, kind)
    return newest


def _field(data: str, key: str) -> Any:
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed.get(key) if isinstance(parsed, dict) else None


def backing(conn: sqlite3.Connection) -> list[tuple[TrustRecord, str | None]]:
    """Every trust row with None when the chain backs it, else why it does not."""
    from krate.store.events import row_hash

    newest = newest_events(conn)
    out = []
    for values in conn.execute(_BACKING).fetchall():
        row = TrustRecord(*values[:4])
        ts, kind, run_id, data, prev_hash, digest, before, head_seq = values[4:]
        seq = row.seq
        problem = None
        if kind is None:
            problem = f"it cites event {seq}, which is not in the record"
        elif kind != TRUSTED:
            problem = f"it cites event {seq}, a {kind} event"
        elif row_hash(prev_hash, seq, ts, kind, run_id, data) != digest:
            problem = f"event {seq} was edited"
        elif (before is None and _has_earlier(conn, seq)) or (
            before is not None and before != prev_hash
        ):
            problem = f"event {seq} is not linked into the chain"
        elif head_seq is None or seq > head_seq:
            problem = f"event {seq} lies past the recorded head"
        elif _field(data, "path") != row.path or _field(data, "sha256") != row.sha256:
            problem = f"event {seq} trusts another file or other bytes"
        elif newest.get(row.path, (seq, TRUSTED))[0] != seq:
            later, later_kind = newest[row.path]
            verb = "revoked" if later_kind == UNTRUSTED else "replaced"
            problem = f"event {later} {verb} the trust of event {seq}"
        elif (_field(data, "trusted_at") or ts) != row.trusted_at:
            problem = f"its time is not event {seq}'s"
        out.append((row, problem))
    return out


def _has_earlier(conn: sqlite3.Connection, seq: int) -> bool:
    """True unless `seq` is the oldest event kept (event 1, or the first after a prune)."""
    return conn.execute("SELECT 1 FROM events WHERE seq < ? LIMIT 1", (seq,)).fetchone() is not None


def crosscheck(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: (rows checked, the first disagreement with the chain, or None)."""
    rows = backing(conn)
    for row, problem in rows:
        if problem is not None:
            return len(rows), f"policy_trust row for {row.path}: {problem}"
    present = {row.path for row, _ in rows}
    for path, (seq, kind) in newest_events(conn).items():
        if kind == TRUSTED and path not in present:
            return len(rows), f"policy_trust has no row for {path}, trusted by event {seq}"
    return len(rows), None


def get(store: Store, path: str) -> TrustRecord | None:
    with translate_errors(store.path):
        if not _has_table(store):
            return None
        row = store.conn.execute(
            "SELECT path, sha256, trusted_at, seq FROM policy_trust WHERE path = ?", (path,)
        ).fetchone()
    return TrustRecord(*row) if row else None


def trust(store: Store, path: str, sha256: str) -> Event:
    """Record that the user trusts `path` with exactly these bytes (replacing an older hash)."""
    with store.write() as writer:
        event = writer.append(TRUSTED, {"path": path, "sha256": sha256})
        store.conn.execute(
            "INSERT INTO policy_trust (path, sha256, trusted_at, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, "
            "trusted_at = excluded.trusted_at, seq = excluded.seq",
            (path, sha256, event.ts, event.seq),
        )
    return event


def carry_over(writer: Writer, rows: list[TrustRecord]) -> None:
    """Record trust again whose event a prune is removing (inside the prune's transaction).

    `rows` must have been checked (`backing`) before the prune deleted their events:
    only trust the chain backed is carried; a row it did not back stays unbacked.
    """
    for row in rows:
        event = writer.append(
            TRUSTED,
            {"path": row.path, "sha256": row.sha256, "trusted_at": row.trusted_at,
             "carried_from": row.seq},
        )  # fmt: skip
        writer.store.conn.execute(
            "UPDATE policy_trust SET seq = ? WHERE path = ?", (event.seq, row.path)
        )


def backed_before(conn: sqlite3.Connection, last_seq: int) -> list[TrustRecord]:
    """Backed trust rows whose event is at or before `last_seq` (what a prune must carry)."""
    return [row for row, problem in backing(conn) if problem is None and row.seq <= last_seq]


def untrust(store: Store, path: str) -> Event | None:
    """Forget the trust in `path`; None (and no event) when it was not trusted."""
    with store.write() as writer:
        row = store.conn.execute(
            "SELECT sha256 FROM policy_trust WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        event = writer.append(UNTRUSTED, {"path": path, "sha256": row[0]})
        store.conn.execute("DELETE FROM policy_trust WHERE path = ?", (path,))
    return event
