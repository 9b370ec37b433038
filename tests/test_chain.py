"""The event chain against a real SQLite file: append, query, head, tamper detection."""

from __future__ import annotations

import sqlite3

import pytest

from krate.paths import Paths
from krate.store import events, open_store


@pytest.fixture
def store(krate_home):
    with open_store(Paths.from_env({"KRATE_HOME": str(krate_home)})) as opened:
        yield opened


def fill(store, n: int = 10) -> None:
    for i in range(n):
        events.append(store, "test.event", {"i": i}, run_id="r1" if i % 2 else None)


def test_append_links_each_event_to_the_previous(store):
    fill(store, 5)
    rows = events.query(store)
    assert [e.seq for e in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == events.GENESIS
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.prev_hash == before.hash
    assert events.head(store) == events.Head(5, rows[-1].hash)
    assert events.verify(store).ok


def test_hash_is_reproducible_from_the_documented_encoding(store):
    import hashlib
    import json

    event = events.append(store, "user.note", {"message": "héllo", "b": 1})
    body = json.dumps(
        [event.seq, event.ts, event.kind, event.run_id, event.data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    expected = hashlib.sha256(f"{event.prev_hash}\n{body}".encode()).hexdigest()
    assert event.hash == expected


def test_query_filters(store):
    fill(store, 10)
    assert [e.data["i"] for e in events.query(store, run_id="r1")] == [1, 3, 5, 7, 9]
    assert [e.seq for e in events.query(store, limit=3)] == [8, 9, 10]
    assert events.query(store, kind_prefix="test.") and not events.query(store, kind_prefix="nope.")
    # % and _ are literal, not LIKE wildcards
    assert events.query(store, kind_prefix="test%") == []


def tamper(store, sql: str, *params) -> None:
    conn = sqlite3.connect(store.path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("attack", "bad_seq", "words"),
    [
        ("edit", 4, "edited"),
        ("delete", 4, "missing"),
        ("insert", 11, "added outside"),
        ("reorder", 4, "reordered"),
        ("truncate", 8, "tail removed"),
        ("forge_middle", 5, "does not follow"),
    ],
)
def test_tampering_is_detected_at_the_right_seq(store, attack, bad_seq, words):
    fill(store, 10)
    rows = {e.seq: e for e in events.query(store)}
    if attack == "edit":
        tamper(store, "UPDATE events SET data = ? WHERE seq = 4", '{"i":400}')
    elif attack == "delete":
        tamper(store, "DELETE FROM events WHERE seq = 4")
    elif attack == "insert":
        # A well-formed event appended behind krate's back, chained correctly.
        prev = rows[10].hash
        digest = events.row_hash(prev, 11, rows[10].ts, "user.note", None, "{}")
        tamper(
            store,
            "INSERT INTO events VALUES (11, ?, 'user.note', NULL, '{}', ?, ?)",
            rows[10].ts,
            prev,
            digest,
        )
    elif attack == "reorder":
        tamper(store, "UPDATE events SET seq = -1 WHERE seq = 4")
        tamper(store, "UPDATE events SET seq = 4 WHERE seq = 5")
        tamper(store, "UPDATE events SET seq = 5 WHERE seq = -1")
    elif attack == "truncate":
        tamper(store, "DELETE FROM events WHERE seq >= 8")
    elif attack == "forge_middle":
        # Event 4 rewritten with a freshly computed hash: the next event no longer follows.
        e = rows[4]
        digest = events.row_hash(e.prev_hash, 4, e.ts, e.kind, e.run_id, '{"i":400}')
        tamper(store, "UPDATE events SET data = '{\"i\":400}', hash = ? WHERE seq = 4", digest)
    result = events.verify(store)
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert words in result.reason


def test_empty_store_verifies(store):
    result = events.verify(store)
    assert result.ok and result.events == 0 and result.head == events.GENESIS


def test_failed_transaction_leaves_no_event(store):
    fill(store, 2)
    with pytest.raises(RuntimeError), store.write() as writer:
        writer.append("test.event", {"i": 99})
        raise RuntimeError("boom")
    assert events.count(store) == 2
    assert events.verify(store).ok
    assert events.append(store, "test.event").seq == 3
