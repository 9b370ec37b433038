"""The event chain: one append-only table where each row hashes the one before.

hash = SHA-256( prev_hash + "\\n" + JSON [seq, ts, kind, run_id, data] ), the JSON
canonical (sorted keys, no spaces, UTF-8). The first event's prev_hash is 64
zeros. `chain_head` repeats the newest seq and hash so that cutting the tail is
detected. docs/audit.md shows how to check the chain with standard tools.

After `krate data prune` the oldest events are gone: the chain then starts at a
`chain.checkpoint` event's `first_seq`, following its `prev_hash` (the hash of the
last pruned event). The checkpoint is itself a link of the chain, so it cannot be
forged or dropped without breaking the walk or the recorded head.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from krate import canonical, sha
from krate.records import NamedTuple
from krate.store.connection import read_snapshot, translate_errors

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.store.connection import Store

GENESIS = "0" * 64
_COLUMNS = "seq, ts, kind, run_id, data, prev_hash, hash"
_str = json.JSONEncoder(ensure_ascii=False).encode


class Event(NamedTuple):
    seq: int
    ts: str
    kind: str
    run_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Head(NamedTuple):
    seq: int
    hash: str


class Verification(NamedTuple):
    ok: bool
    events: int
    head: str
    first_bad_seq: int | None
    reason: str
    # The seq the chain starts from: 1, or a prune checkpoint's first kept seq.
    first_seq: int = 1
    # Filled by store/record.py (`krate audit verify`), which checks more than the chain:
    # what failed (database | chain | head_copy | index), SQLite's own check, the copy
    # of the head beside the database, the index rows checked per table, and a note.
    problem: str | None = None
    database: str | None = None
    head_copy: dict[str, Any] | None = None
    indexes: dict[str, int] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def format_ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_data(data: dict[str, Any]) -> str:
    return canonical.dumps(data)


def row_hash(prev_hash: str, seq: int, ts: str, kind: str, run_id: str | None, data: str) -> str:
    body = f"[{seq:d},{_str(ts)},{_str(kind)},{_str(run_id)},{data}]"
    return sha.hexdigest(f"{prev_hash}\n{body}".encode())


class Writer:
    """Appends inside one `Store.write()` transaction (the write lock is held)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        row = store.conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        self._head = Head(row[0], row[1]) if row else Head(0, GENESIS)
        self.start = self._head  # where this transaction began (for the head copy)
        self.appended = False
        self._dirty = False

    @property
    def head(self) -> Head:
        return self._head

    def append(
        self, kind: str, data: dict[str, Any] | None = None, run_id: str | None = None
    ) -> Event:
        seq = self._head.seq + 1
        ts = format_ts(self.store.clock())
        text = encode_data(data or {})
        digest = row_hash(self._head.hash, seq, ts, kind, run_id, text)
        self.store.conn.execute(
            f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, kind, run_id, text, self._head.hash, digest),
        )
        event = Event(seq, ts, kind, run_id, json.loads(text), self._head.hash, digest)
        self._head = Head(seq, digest)
        self._dirty = self.appended = True
        return event

    def flush_head(self) -> None:
        if self._dirty:
            self.store.conn.execute(
                "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (self._head.seq, self._head.hash),
            )
            self._dirty = False


def append(
    store: Store, kind: str, data: dict[str, Any] | None = None, run_id: str | None = None
) -> Event:
    """Append one event in its own transaction."""
    with store.write() as writer:
        return writer.append(kind, data, run_id)


def _event(row: tuple) -> Event:
    seq, ts, kind, run_id, data, prev_hash, digest = row
    return Event(seq, ts, kind, run_id, json.loads(data), prev_hash, digest)


def query(
    store: Store,
    *,
    since: str | None = None,
    until: str | None = None,
    kind_prefix: str | None = None,
    run_id: str | None = None,
    limit: int | None = None,
) -> list[Event]:
    """Events matching every filter given, oldest first; `limit` keeps the newest N."""
    where, params = [], []
    if since:
        where.append("ts >= ?")
        params.append(since)
    if until:
        where.append("ts < ?")
        params.append(until)
    if kind_prefix:
        # A range instead of LIKE so the kind index serves it and % or _ mean themselves.
        where.append("kind >= ? AND kind < ?")
        params += [kind_prefix, kind_prefix + "\U0010ffff"]
    if run_id:
        where.append("run_id = ?")
        params.append(run_id)
    sql = f"SELECT {_COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with translate_errors(store.path):
        rows = store.conn.execute(sql, params).fetchall()
    return [_event(row) for row in reversed(rows)]


def get(store: Store, seq: int) -> Event | None:
    if not 0 < seq < 2**63:  # not a seq SQLite can hold: no such event
        return None
    with translate_errors(store.path):
        row = store.conn.execute(f"SELECT {_COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
    return _event(row) if row else None


def head(store: Store) -> Head:
    with translate_errors(store.path):
        row = store.conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
    return Head(row[0], row[1]) if row else Head(0, GENESIS)


def count(store: Store) -> int:
    with translate_errors(store.path):
        return store.conn.execute("SELECT count(*) FROM events").fetchone()[0]


def iter_all(store: Store) -> Iterator[Event]:
    with translate_errors(store.path):
        for row in store.conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq"):
            yield _event(row)


CHECKPOINT_KIND = "chain.checkpoint"


def _latest_checkpoint(store: Store) -> tuple | None:
    with translate_errors(store.path):
        return store.conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1",
            (CHECKPOINT_KIND,),
        ).fetchone()


def data_of(text: str) -> dict[str, Any]:
    """A stored event's data as a dict; {} when it is not one (a row edited behind
    krate's back), so the checks that read it report a disagreement, not a crash."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoint_start(data: str) -> tuple[int, str] | None:
    """(first_seq, prev_hash) named by a checkpoint's data; None if malformed."""
    try:
        parsed = json.loads(data)
        first_seq, prev_hash = parsed["first_seq"], parsed["prev_hash"]
    except (ValueError, KeyError, TypeError):
        return None  # a malformed checkpoint vouches for nothing
    if not isinstance(first_seq, int) or not isinstance(prev_hash, str):
        return None
    return first_seq, prev_hash


def verify(store: Store) -> Verification:
    """Walk the whole chain; report the first event that does not check out.

    The walk starts at seq 1 from GENESIS, or, when the oldest rows were pruned,
    at the newest checkpoint's first kept seq from the hash it names. The
    checkpoint event is inside the walked range, so its own hash is checked too
    (first, since where the walk starts depends on it). One read transaction, so
    a concurrent append is either wholly seen or not at all.
    """
    with translate_errors(store.path), read_snapshot(store.conn):
        return _walk(store)


def _walk(store: Store) -> Verification:
    recorded = head(store)
    expected_seq, last_hash, n = 1, GENESIS, 0
    first_seq = 1

    def bad(seq: int, reason: str) -> Verification:
        return Verification(False, n, recorded.hash, seq, reason, first_seq)

    with translate_errors(store.path):
        row = store.conn.execute("SELECT min(seq) FROM events").fetchone()
    first_row = row[0] if row else None
    if first_row is not None and first_row != 1:
        checkpoint = _latest_checkpoint(store)
        start = None
        if checkpoint is not None:
            seq, ts, kind, run_id, data, prev_hash, digest = checkpoint
            if row_hash(prev_hash, seq, ts, kind, run_id, data) != digest:
                return bad(seq, f"event {seq} does not match its hash (edited)")
            start = checkpoint_start(data)
        if start is not None and start[0] == first_row:
            expected_seq, last_hash = start
        elif start is not None and start[0] < first_row:
            expected_seq = start[0]  # rows the checkpoint kept are gone: reported below
        else:
            gap = "event 1 is" if first_row == 2 else f"events 1..{first_row - 1} are"
            return bad(1, f"{gap} missing (deleted; no prune checkpoint accounts for them)")
    first_seq = expected_seq

    with translate_errors(store.path):
        rows = store.conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq")
        for seq, ts, kind, run_id, data, prev_hash, digest in rows:
            if seq != expected_seq:
                return bad(expected_seq, f"event {expected_seq} is missing (deleted)")
            if prev_hash != last_hash:
                return bad(
                    seq, f"event {seq} does not follow event {seq - 1} (inserted or reordered)"
                )
            if row_hash(prev_hash, seq, ts, kind, run_id, data) != digest:
                return bad(seq, f"event {seq} does not match its hash (edited)")
            last_hash, expected_seq, n = digest, seq + 1, n + 1
    last_seq = expected_seq - 1
    if recorded.seq > last_seq:
        return bad(
            last_seq + 1, f"events {last_seq + 1}..{recorded.seq} are missing (tail removed)"
        )
    if recorded.seq < last_seq:
        return bad(recorded.seq + 1, f"events after {recorded.seq} were added outside krate")
    if recorded.hash != last_hash:
        return bad(last_seq, f"event {last_seq} does not match the recorded chain head")
    if first_seq > 1:
        reason = f"chain intact from the prune checkpoint (events before {first_seq} were pruned)"
        return Verification(True, n, last_hash, None, reason, first_seq)
    return Verification(True, n, last_hash, None, "chain intact")
