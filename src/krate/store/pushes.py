"""SQL for the `pushes` index: where each artifact was pushed (one row per finished push).

A row is written only in the transaction of its `push.finished` event, i.e. only
after the registry accepted the tagged manifest; failed pushes are events only.
Never holds credentials. `pushes_for_digest()` is what `krate artifacts show`
lists.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from krate.store.connection import query

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Writer

_COLUMNS = (
    "push_id, artifact_digest, name, registry, repository, tag, manifest_digest, "
    "provenance_digest, referrers, bytes_sent, pushed_at"
)


@dataclass(frozen=True)
class PushRow:
    push_id: str
    artifact_digest: str
    name: str
    registry: str
    repository: str
    tag: str
    manifest_digest: str
    provenance_digest: str | None
    referrers: str | None  # "api" or "tag": how the provenance is found from the artifact
    bytes_sent: int
    pushed_at: str

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reference": self.reference}


def insert(writer: Writer, row: PushRow) -> None:
    """Inside the caller's `store.write()` transaction, next to the push.finished event."""
    writer.store.conn.execute(
        f"INSERT INTO pushes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.push_id,
            row.artifact_digest,
            row.name,
            row.registry,
            row.repository,
            row.tag,
            row.manifest_digest,
            row.provenance_digest,
            row.referrers,
            row.bytes_sent,
            row.pushed_at,
        ),
    )


def pushes_for_digest(store: Store, digest: str) -> list[PushRow]:
    """Every finished push of this artifact digest, oldest first."""
    sql = f"SELECT {_COLUMNS} FROM pushes WHERE artifact_digest = ? ORDER BY pushed_at, rowid"
    return [PushRow(*r) for r in query(store, sql, (digest,))]


def list_pushes(store: Store, limit: int | None = None) -> list[PushRow]:
    """Newest last; `limit` keeps the newest N."""
    sql = f"SELECT {_COLUMNS} FROM pushes ORDER BY pushed_at DESC, rowid DESC"
    return [PushRow(*r) for r in reversed(query(store, sql, limit=limit))]


def crosscheck(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: each pushes row against its `push.finished` event, and the reverse."""
    finished: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for seq, ts, data in conn.execute(
        "SELECT seq, ts, data FROM events WHERE kind = 'push.finished' ORDER BY seq"
    ):
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            finished[str(parsed.get("push_id"))] = (seq, ts, parsed)
    n = 0
    for values in conn.execute(f"SELECT {_COLUMNS} FROM pushes ORDER BY push_id"):
        n += 1
        row = PushRow(*values)
        if row.push_id not in finished:
            return n, f"pushes row {row.push_id} has no push.finished event"
        seq, ts, data = finished.pop(row.push_id)
        expected = {
            "artifact_digest": data.get("artifact"),
            "name": data.get("name"),
            "registry": data.get("registry"),
            "repository": data.get("repository"),
            "tag": data.get("tag"),
            "manifest_digest": data.get("manifest"),
            "provenance_digest": data.get("provenance"),
            "referrers": data.get("referrers"),
            "bytes_sent": data.get("bytes"),
            "pushed_at": ts,
        }
        for field, value in expected.items():
            if getattr(row, field) != value:
                return n, f"pushes row {row.push_id}: {field} is not what event {seq} says"
    for push_id, (seq, _, _) in finished.items():
        return n, f"pushes has no row for push {push_id} (finished by event {seq})"
    return n, None
