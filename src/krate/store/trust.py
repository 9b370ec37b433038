"""SQL for trusted project policy files: the `policy_trust` index and its events.

Each change appends `policy.trusted` / `policy.untrusted` to the event chain and
updates the index in the same transaction, so the record and the index never
disagree. Only the file's path and SHA-256 are kept, never its contents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from krate.store.connection import translate_errors

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Event


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
    """{path: sha256} of every trusted file (empty when nothing is trusted)."""
    with translate_errors(store.path):
        if not _has_table(store):
            return {}
        return dict(store.conn.execute("SELECT path, sha256 FROM policy_trust"))


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
        event = writer.append("policy.trusted", {"path": path, "sha256": sha256})
        store.conn.execute(
            "INSERT INTO policy_trust (path, sha256, trusted_at, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, "
            "trusted_at = excluded.trusted_at, seq = excluded.seq",
            (path, sha256, event.ts, event.seq),
        )
    return event


def untrust(store: Store, path: str) -> Event | None:
    """Forget the trust in `path`; None (and no event) when it was not trusted."""
    with store.write() as writer:
        row = store.conn.execute(
            "SELECT sha256 FROM policy_trust WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        event = writer.append("policy.untrusted", {"path": path, "sha256": row[0]})
        store.conn.execute("DELETE FROM policy_trust WHERE path = ?", (path,))
    return event
