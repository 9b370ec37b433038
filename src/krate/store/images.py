"""SQL for the `images` index: one row per image name (ref), written with its event.

`image.pulled` / `image.imported` insert or replace the row of their ref (a tag that
moves points at the new image), `image.removed` deletes it, in the same transaction.
Several refs may name one image (same config digest). Only this module knows the columns.
"""

from __future__ import annotations

import json
import sqlite3

from krate.records import NamedTuple
from krate.store.connection import query
from krate.store.events import data_of

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.store.connection import Store
    from krate.store.events import Writer

ADDED_KINDS = ("image.pulled", "image.imported")
REMOVED = "image.removed"
_COLUMNS = "ref, config_digest, manifest_digest, layers, source, added"


class ImageRow(NamedTuple):
    ref: str
    config_digest: str
    manifest_digest: str | None
    layers: list[str]
    source: str
    added: str


def _row(values: tuple) -> ImageRow:
    ref, config, manifest, layers, source, added = values
    return ImageRow(ref, config, manifest, json.loads(layers), source, added)


def event_data(row: ImageRow) -> dict[str, Any]:
    return {
        "ref": row.ref,
        "config": row.config_digest,
        "manifest": row.manifest_digest,
        "layers": row.layers,
        "source": row.source,
    }


def put(writer: Writer, kind: str, row: ImageRow) -> None:
    """Append `kind` (image.pulled / image.imported) and write the ref's row to match it."""
    event = writer.append(kind, event_data(row))
    writer.store.conn.execute(
        f"INSERT OR REPLACE INTO images ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (
            row.ref,
            row.config_digest,
            row.manifest_digest,
            json.dumps(row.layers),
            row.source,
            event.ts,
        ),
    )


def remove(writer: Writer, row: ImageRow) -> None:
    writer.append(REMOVED, {"ref": row.ref, "config": row.config_digest})
    writer.store.conn.execute("DELETE FROM images WHERE ref = ?", (row.ref,))


def all_rows(store: Store) -> list[ImageRow]:
    """Oldest first."""
    return [_row(r) for r in query(store, f"SELECT {_COLUMNS} FROM images ORDER BY added, ref")]


def by_ref(store: Store, ref: str) -> ImageRow | None:
    rows = query(store, f"SELECT {_COLUMNS} FROM images WHERE ref = ?", (ref,))
    return _row(rows[0]) if rows else None


def by_config(store: Store, config_digest: str) -> list[ImageRow]:
    sql = f"SELECT {_COLUMNS} FROM images WHERE config_digest = ? ORDER BY added, ref"
    return [_row(r) for r in query(store, sql, (config_digest,))]


def configs_with_prefix(store: Store, prefix: str, limit: int = 11) -> list[str]:
    sql = (
        "SELECT DISTINCT config_digest FROM images WHERE config_digest >= ? "
        "AND config_digest < ? ORDER BY config_digest LIMIT ?"
    )
    return [r[0] for r in query(store, sql, (prefix, prefix + "\U0010ffff", limit))]


def referenced_digests(store: Store) -> set[str]:
    """Every blob digest an image row still needs (config, manifest, layers)."""
    out: set[str] = set()
    for row in all_rows(store):
        out.add(row.config_digest)
        if row.manifest_digest:
            out.add(row.manifest_digest)
        out.update(row.layers)
    return out


def recorded_before(conn: sqlite3.Connection, last_seq: int) -> list[tuple[ImageRow, str]]:
    """Rows whose latest event is at or before `last_seq` (what a prune must record again),
    with that event's kind."""
    latest: dict[str, tuple[int, str]] = {}
    for seq, kind, data in conn.execute(
        "SELECT seq, kind, data FROM events WHERE kind IN (?, ?) ORDER BY seq", ADDED_KINDS
    ):
        latest[str(data_of(data).get("ref"))] = (seq, kind)
    out = []
    for values in conn.execute(f"SELECT {_COLUMNS} FROM images ORDER BY ref"):
        row = _row(values)
        seq, kind = latest.get(row.ref, (0, ADDED_KINDS[1]))
        if seq <= last_seq:
            out.append((row, kind))
    return out


def carry_over(writer: Writer, rows: list[tuple[ImageRow, str]]) -> None:
    """Record images again whose event a prune is removing, keeping when they were added."""
    for row, kind in rows:
        writer.append(kind, {**event_data(row), "added": row.added, "carried": True})


def crosscheck(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: replaying the image events gives exactly the rows in `images`."""
    state: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for seq, ts, kind, data in conn.execute(
        "SELECT seq, ts, kind, data FROM events WHERE kind IN (?, ?, ?) ORDER BY seq",
        (*ADDED_KINDS, REMOVED),
    ):
        parsed = data_of(data)
        ref = str(parsed.get("ref"))
        if kind == REMOVED:
            state.pop(ref, None)
        else:
            state[ref] = (seq, ts, parsed)
    n = 0
    for values in conn.execute(f"SELECT {_COLUMNS} FROM images ORDER BY ref"):
        n += 1
        row = _row(values)
        if row.ref not in state:
            return n, f"images row {row.ref} has no image event"
        seq, ts, data = state.pop(row.ref)
        expected = {
            "config_digest": data.get("config"),
            "manifest_digest": data.get("manifest"),
            "layers": data.get("layers"),
            "source": data.get("source"),
            "added": data.get("added", ts),  # a prune's carried record keeps the first time
        }
        for field, value in expected.items():
            if getattr(row, field) != value:
                return n, f"images row {row.ref}: {field} is not what event {seq} says"
    for ref, (seq, _, _) in state.items():
        return n, f"images has no row for {ref} (recorded by event {seq})"
    return n, None


def kept_by_records(store: Store, digests: set[str]) -> set[str]:
    """Those of `digests` a build record or a stored artifact still names."""
    kept: set[str] = set()
    for digest in digests:
        if query(store, "SELECT 1 FROM artifacts WHERE digest = ? LIMIT 1", (digest,)):
            kept.add(digest)
            continue
        hex_part = digest.split(":", 1)[-1]
        like = f"%{hex_part}%"
        if query(store, "SELECT 1 FROM builds WHERE statement LIKE ? LIMIT 1", (like,)):
            kept.add(digest)
    return kept
