"""`krate data prune`: whole runs dropped, the chain verifies from a checkpoint, tampering after
a prune is still caught, orphaned artifacts go, no readable copy stays, kills are harmless."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from krate.paths import Paths
from krate.privacy import prune as domain
from krate.store import events, open_store
from krate.store import prune as prune_sql
from tests.conftest import KRATE, run_krate

NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture
def paths(krate_home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(krate_home)})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def days_ago(self, days: float) -> Clock:
        self.now = NOW - timedelta(days=days)
        return self


def insert_row(conn: sqlite3.Connection, table: str, **known) -> None:
    """A row with the given values; other NOT NULL columns get placeholders by type."""
    values = dict(known)
    for _, name, kind, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
        if name in values or not notnull or default is not None or pk:
            continue
        values[name] = 0 if "INT" in kind.upper() or "REAL" in kind.upper() else "x"
    cols = ", ".join(values)
    conn.execute(
        f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})",
        list(values.values()),
    )


def digest(n: int) -> str:
    return f"{n:064x}"


def start_run(w, run_id: str, argv: list[str]) -> None:
    """A run.started event and its runs row, as krate writes them."""
    from krate.store import runs as runs_store

    facts = {"cwd": "/w", "workspace": "/w", "backend": "test", "krate_pid": 1}
    data = {"argv": argv, **facts, "policy": {"name": "default", "hash": "h"}}
    event = w.append("run.started", data, run_id=run_id)
    row = {"argv": argv, **facts, "policy_name": "default", "policy_hash": "h"}
    runs_store.insert_started(w, run_id, event, row)


def finish_run(w, run_id: str) -> None:
    from krate.store import runs as runs_store

    event = w.append(
        "run.finished", {"status": "finished", "exit_code": 0, "duration_s": 1.0}, run_id
    )
    runs_store.update_finished(
        w, run_id, event, status="finished", exit_code=0, reason=None, duration_s=1.0
    )


def record_build(w, build_id: str, run_id: str, created: str, digests, marker: str) -> None:
    """A build row, its artifact rows and their events, as krate writes them."""
    import hashlib

    from krate.store.artifacts import BuildRow, NewArtifact, insert_build

    statement = json.dumps(
        {
            "subject": [{"name": "a", "digest": {"sha256": d}} for d in digests],
            "predicate": {
                "buildDefinition": {"externalParameters": {"workingDirectory": "/w", "m": marker}},
                "runDetails": {
                    "byproducts": [{"name": "exitStatus", "annotations": {"exitStatus": 0}}]
                },
            },
        }
    )
    sha = hashlib.sha256(statement.encode()).hexdigest()
    new = [NewArtifact(f"sha256:{d}", 1, "a", True) for d in digests]
    insert_build(
        w, BuildRow(build_id, run_id, None, created, 0, "/w", len(new), statement, sha), new
    )
    for a in new:
        w.append("artifact.stored", {"digest": a.digest, "size": a.size, "name": a.name,
                                     "build_id": build_id, "new": True}, run_id=run_id)  # fmt: skip
    w.append("build.recorded", {"build_id": build_id, "name": None,
                                "subjects": sorted({a.digest for a in new}),
                                "statement_sha256": sha}, run_id=run_id)  # fmt: skip


def seed(paths: Paths, marker: str, kept_marker: str) -> dict:
    """Old run r1 (with a build), a run r2 spanning the cutoff, recent run r3 (with a build);
    events 1-7 are older than the cutoff, but r2 (8-9) spans it."""
    clock = Clock()
    art = paths.artifacts_dir / "sha256"
    art.mkdir(parents=True)
    with open_store(paths, clock=clock) as store:
        conn = store.conn
        conn.execute("CREATE TABLE test_decisions (id INTEGER PRIMARY KEY, run_id TEXT, what TEXT)")
        conn.execute(
            "CREATE TABLE test_details (id INTEGER PRIMARY KEY, "
            "decision_id INTEGER REFERENCES test_decisions(id), note TEXT)"
        )
        conn.execute("CREATE TABLE test_settings (k TEXT PRIMARY KEY, v TEXT)")
        with store.write() as w:
            clock.days_ago(100)
            start_run(w, "r1", ["echo", marker])  # 1
            conn.execute("INSERT INTO test_decisions VALUES (1, 'r1', ?)", (marker,))
            conn.execute("INSERT INTO test_details VALUES (1, 1, ?)", (marker,))
            record_build(w, "b1", "r1", "old", (digest(1), digest(2)), marker)  # 2-4
            finish_run(w, "r1")  # 5
            clock.days_ago(90)
            w.append("user.note", {"message": marker})  # 6
            trusted = w.append("policy.trusted", {"path": "/p/krate.toml", "sha256": digest(9)})
            insert_row(
                conn,
                "policy_trust",
                path="/p/krate.toml",
                sha256=digest(9),
                trusted_at=trusted.ts,
                seq=trusted.seq,  # 7
            )
            conn.execute("INSERT INTO test_settings VALUES ('k', 'old but not tied to a run')")
            clock.days_ago(40)
            start_run(w, "r2", ["spans"])  # 8
            conn.execute("INSERT INTO test_decisions VALUES (2, 'r2', 'spans')")
            clock.days_ago(10)
            finish_run(w, "r2")  # 9
            clock.days_ago(1)
            start_run(w, "r3", [kept_marker])  # 10
            record_build(w, "b3", "r3", "new", (digest(2), digest(3)), kept_marker)  # 11-13
            w.append("user.note", {"message": kept_marker})  # 14
    old = time.time() - 86400 * 100
    for n in (1, 2, 3, 4, 5):
        (art / digest(n)).write_bytes(f"artifact {n}".encode())
        if n != 5:
            os.utime(art / digest(n), (old, old))  # 4: an old orphan; 5: just written
    return {"art": art}


def test_prune_drops_whole_runs_and_keeps_the_chain_verifiable(paths, cli):
    found = seed(paths, "OLD", "NEW")
    with open_store(paths) as store:
        head_before = events.head(store)
        result = domain.prune(store, CUTOFF, paths.artifacts_dir, NOW)
        assert result.events == 7 and result.runs == 1
        assert result.tables == {
            "runs": 1,
            "builds": 1,
            "artifacts": 2,
            "test_decisions": 1,
            "test_details": 1,
        }
        checkpoint = events.get(store, result.checkpoint_seq)
        assert checkpoint.kind == "chain.checkpoint" and checkpoint.seq == head_before.seq + 1
        assert checkpoint.data["first_seq"] == 8
        kept = events.query(store)
        assert [e.seq for e in kept] == list(range(8, 17))
        assert kept[0].kind == "run.started" and kept[0].run_id == "r2"  # r2 not cut in half
        assert checkpoint.data["prev_hash"] == kept[0].prev_hash
        verified = events.verify(store)
        assert verified.ok and verified.first_seq == 8 and verified.events == 9
        # trust outlives its pruned event: recorded again after the checkpoint, still backed
        carried = kept[-1]
        assert carried.kind == "policy.trusted" and carried.data["carried_from"] == 7
        assert carried.data["path"] == "/p/krate.toml" and carried.data["sha256"] == digest(9)
        from krate.store import trust

        assert trust.checked_files(store) == ({"/p/krate.toml": digest(9)}, [])
        rows = lambda sql: store.conn.execute(sql).fetchall()  # noqa: E731
        assert rows("SELECT id FROM builds") == [("b3",)]
        assert rows("SELECT id FROM runs ORDER BY id") == [("r2",), ("r3",)]
        assert rows("SELECT id FROM test_decisions") == [(2,)]
        assert rows("SELECT count(*) FROM test_details") == [(0,)]
        assert rows("SELECT count(*) FROM policy_trust") == [(1,)]  # trust is never pruned
        assert rows("SELECT count(*) FROM test_settings") == [(1,)]  # not tied to a run
    # orphaned artifacts only: 1 (its build pruned) and 4 (already unreferenced, old)
    assert sorted(result.artifacts_removed) == [digest(1), digest(4)]
    assert sorted(p.name for p in found["art"].iterdir()) == [digest(2), digest(3), digest(5)]

    report = json.loads(cli("audit", "verify", "--json").out)
    assert report["ok"] and report["first_seq"] == 8, report
    assert report["head_copy"]["state"] == "matches"
    assert report["indexes"] == {"policy_trust": 1, "runs": 2, "builds": 1, "artifacts": 2,
                                 "pushes": 0, "images": 0}  # fmt: skip
    text = cli("audit", "verify")
    assert text.code == 0 and "chain intact" in text.out


def test_pruned_content_leaves_no_readable_copy_in_the_database(paths, krate_home):
    marker, kept = f"PRUNED-{uuid.uuid4().hex}", f"KEPT-{uuid.uuid4().hex}"
    seed(paths, marker, kept)
    with open_store(paths) as store:
        prune_sql.checkpoint_truncate(store.conn)

    def holders(needle: str) -> set[str]:
        return {
            p.name
            for p in krate_home.iterdir()
            if p.is_file() and needle.encode() in p.read_bytes()
        }

    assert "krate.db" in holders(marker)
    with open_store(paths) as store:
        result = domain.prune(store, CUTOFF, paths.artifacts_dir, NOW)
        assert result.wal_emptied
        # while the connection is still open: the WAL and SHM are there and clean too
        assert (krate_home / "krate.db-wal").exists()
        assert holders(marker) == set()
    assert holders(marker) == set()
    assert "krate.db" in holders(kept)  # the scan does find what is still there


def test_prune_twice_and_prune_everything(paths):
    clock = Clock()
    with open_store(paths, clock=clock) as store:
        for day in range(60, 0, -1):
            clock.days_ago(day)
            events.append(store, "user.note", {"day": day})
        first = domain.prune(store, NOW - timedelta(days=40), paths.artifacts_dir, NOW)
        assert first.events == 20 and events.verify(store).ok
        second = domain.prune(store, NOW - timedelta(days=20), paths.artifacts_dir, NOW)
        # the first checkpoint (seq 61, recorded now) is newer than the cutoff: kept
        assert second.events == 20 and events.verify(store).first_seq == 41
        everything = domain.prune(store, NOW + timedelta(days=1), paths.artifacts_dir, NOW)
        assert [e.kind for e in events.query(store)] == ["chain.checkpoint"]
        verified = events.verify(store)
        assert verified.ok and verified.events == 1
        assert verified.first_seq == everything.checkpoint_seq
        nothing = domain.prune(store, NOW - timedelta(days=100), paths.artifacts_dir, NOW)
        assert nothing.events == 0 and nothing.checkpoint_seq is None


def pruned_store(paths) -> None:
    clock = Clock()
    with open_store(paths, clock=clock) as store:
        for i in range(15):
            clock.days_ago(100 - i if i < 10 else 5)
            events.append(store, "user.note", {"i": i})
        domain.prune(store, CUTOFF, paths.artifacts_dir, NOW)  # checkpoint: seq 16
        clock.days_ago(0)
        events.append(store, "user.note", {"i": 17})
        events.append(store, "user.note", {"i": 18})
        assert events.verify(store).ok


def tamper(path: Path, sql: str, *params) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("attack", "bad_seq", "words"),
    [
        ("edit_kept", 12, "edited"),
        ("delete_first_kept", 11, "missing"),
        ("delete_first_two", 11, "missing"),
        ("delete_checkpoint", 1, "missing"),  # nothing vouches for the gap any more
        ("edit_checkpoint", 16, "edited"),
        ("reinsert_pruned", 1, "missing"),
        ("truncate", 1, "missing"),  # the checkpoint went with the tail
        ("truncate_after_checkpoint", 18, "tail removed"),
        ("append_outside", 19, "added outside"),
        ("forged_start", 11, "does not follow"),
    ],
)
def test_tampering_after_prune_is_detected(paths, attack, bad_seq, words):
    pruned_store(paths)
    db = paths.db_path
    if attack == "edit_kept":
        tamper(db, "UPDATE events SET data = '{\"i\":99}' WHERE seq = 12")
    elif attack == "delete_first_kept":
        tamper(db, "DELETE FROM events WHERE seq = 11")
    elif attack == "delete_first_two":
        tamper(db, "DELETE FROM events WHERE seq IN (11, 12)")
    elif attack == "delete_checkpoint":
        tamper(db, "DELETE FROM events WHERE seq = 16")
    elif attack == "edit_checkpoint":
        tamper(db, "UPDATE events SET data = json_set(data, '$.first_seq', 12) WHERE seq = 16")
    elif attack == "reinsert_pruned":
        tamper(
            db,
            "INSERT INTO events VALUES (10, 'x', 'user.note', NULL, '{}', ?, ?)",
            "0" * 64,
            "0" * 64,
        )
    elif attack == "truncate":
        tamper(db, "DELETE FROM events WHERE seq >= 14")
    elif attack == "truncate_after_checkpoint":
        tamper(db, "DELETE FROM events WHERE seq = 18")
    elif attack == "append_outside":
        with open_store(paths, readonly=True) as store:
            last = events.get(store, 18)
        forged = events.row_hash(last.hash, 19, last.ts, "user.note", None, "{}")
        tamper(
            db,
            "INSERT INTO events VALUES (19, ?, 'user.note', NULL, '{}', ?, ?)",
            last.ts,
            last.hash,
            forged,
        )
    elif attack == "forged_start":
        tamper(db, "UPDATE events SET prev_hash = ? WHERE seq = 11", "f" * 64)
    with open_store(paths, readonly=True) as store:
        result = events.verify(store)
    assert not result.ok
    assert result.first_bad_seq == bad_seq, result
    assert words in result.reason


# -- the command line ---------------------------------------------------------------------


def test_prune_cli_options_and_confirmation(cli, paths, krate_home):
    clock = Clock()
    with open_store(paths, clock=clock.days_ago(50)) as store:
        events.append(store, "user.note", {"message": "old"})
    assert cli("audit", "note", "new").code == 0
    assert cli("data", "prune").code == 2
    assert cli("data", "prune", "--before", "2020-01-01", "--older-than", "1d").code == 2
    bad = cli("data", "prune", "--older-than", "yesterday")
    assert bad.code == 2 and "--older-than" in bad.err
    refused = run_krate("data", "prune", "--older-than", "30d", stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert "prune 1 event (" in refused.stderr
    assert len(json.loads(cli("audit", "list", "--json").out)) == 2

    done = run_krate("data", "prune", "--older-than", "30d", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events"] == 1
    listed = json.loads(cli("audit", "list", "--json").out)
    assert [e["kind"] for e in listed] == ["user.note", "chain.checkpoint"]
    assert cli("audit", "verify").code == 0
    again = cli("data", "prune", "--before", (NOW - timedelta(days=30)).strftime("%Y-%m-%d"))
    assert again.code == 0 and "nothing recorded before" in again.err


# -- kills ----------------------------------------------------------------------------------


def big_store(paths: Paths, n: int, marker: str) -> None:
    clock = Clock()
    with open_store(paths, clock=clock) as store, store.write() as w:
        for i in range(n):
            clock.days_ago(200 - 190 * i / n)
            w.append("user.note", {"message": f"{marker} {i}", "pad": "x" * 200})


@pytest.mark.parametrize(
    ("point", "committed"),
    [("prune.deleted", False), ("prune.committed", True), ("prune.artifacts-removed", True)],
)
def test_killed_prune_leaves_old_or_new_state(paths, krate_home, point, committed):
    marker = f"PRUNED-{uuid.uuid4().hex}"
    big_store(paths, 2000, marker)
    with open_store(paths, readonly=True) as store:
        before = events.head(store)
    env = dict(os.environ, KRATE_TEST_CRASH_AT=point)
    killed = run_krate("data", "prune", "--older-than", "100d", "--yes", env=env)
    assert killed.returncode == -9, killed.stderr
    with open_store(paths, readonly=True) as store:
        verified = events.verify(store)
        count = events.count(store)
        head = events.head(store)
    assert verified.ok, verified
    whole = run_krate("audit", "verify", "--json")  # the head copy too, whatever the state
    assert whole.returncode == 0, whole.stdout
    if committed:
        assert head.seq == before.seq + 1 and verified.first_seq > 1 and count < 2000
    else:
        assert head == before and count == 2000
    # the next prune finishes the job: compacted, nothing readable left of what was pruned
    done = run_krate("data", "prune", "--older-than", "100d", "--yes")
    assert done.returncode == 0, done.stderr
    with open_store(paths, readonly=True) as store:
        assert events.verify(store).ok
        kept = [e.data["message"] for e in events.query(store, kind_prefix="user.")]
    pruned = [f"{marker} {i}".encode() for i in range(2000) if f"{marker} {i}" not in kept]
    assert pruned
    for name in ("krate.db", "krate.db-wal"):
        path = krate_home / name
        data = path.read_bytes() if path.exists() else b""
        assert not any(p + b'"' in data for p in pruned), name


def test_sigkill_at_moments_of_a_large_prune(paths, krate_home):
    """A prune of 20,000 events takes about a second here; kill it at several moments."""
    import shutil

    for delay in (0.05, 0.35, 0.6, 0.8):
        shutil.rmtree(krate_home, ignore_errors=True)
        big_store(paths, 20000, "BULK")
        with open_store(paths, readonly=True) as store:
            before = events.head(store)
        proc = subprocess.Popen(
            [KRATE, "data", "prune", "--older-than", "100d", "--yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open_store(paths, readonly=True) as store:
            verified = events.verify(store)
            head = events.head(store)
            count = events.count(store)
        assert verified.ok, (delay, verified)
        if head == before:
            assert count == 20000
        else:  # the new state: the prefix and nothing else is gone, the checkpoint is there
            assert head.seq == before.seq + 1 and count == 20000 - verified.first_seq + 2


# -- plug-in points -------------------------------------------------------------------------


def memory_store(*statements: str):
    from sqlite_utils import Database

    from krate.store.connection import Store

    db = Database(memory=True)
    for sql in statements:
        db.execute(sql)
    return Store(db, None, readonly=False, clock=lambda: NOW)


def test_orphan_hook_with_a_hand_made_artifacts_table(tmp_path):
    root = tmp_path / "artifacts" / "sha256"
    root.mkdir(parents=True)
    old = time.time() - 3600
    for n in (1, 2, 3):
        (root / digest(n)).write_bytes(b"x")
        os.utime(root / digest(n), (old, old))
    (root / "not-a-digest.tmp").write_bytes(b"in progress")
    os.utime(root / "not-a-digest.tmp", (old, old))
    store = memory_store(
        "CREATE TABLE artifacts (name TEXT, ref TEXT)",
        f"INSERT INTO artifacts VALUES ('a', 'sha256:{digest(1)}'), ('b', '{digest(3).upper()}')",
    )
    removed = domain.remove_orphan_artifacts(store, tmp_path / "artifacts", NOW)
    assert removed == [digest(2)]
    assert sorted(p.name for p in root.iterdir()) == [digest(1), digest(3), "not-a-digest.tmp"]
    # without an artifacts table krate does not guess: nothing is removed
    bare = memory_store("CREATE TABLE other (x TEXT)")
    assert domain.remove_orphan_artifacts(bare, tmp_path / "artifacts", NOW) == []
    assert len(list(root.iterdir())) == 3


def test_a_feature_registers_its_own_prune_rule(paths, monkeypatch):
    monkeypatch.setitem(prune_sql.RULES, "test_ledger", prune_sql.by_time("ts"))
    monkeypatch.setitem(prune_sql.RULES, "test_kept", prune_sql.keep)
    clock = Clock()
    with open_store(paths, clock=clock) as store:
        store.conn.execute("CREATE TABLE test_ledger (ts TEXT, host TEXT)")
        store.conn.execute("CREATE TABLE test_kept (run_id TEXT)")
        store.conn.execute("INSERT INTO test_ledger VALUES ('2000-01-01T00:00:00Z', 'old')")
        store.conn.execute("INSERT INTO test_ledger VALUES (?, 'new')", (NOW.isoformat(),))
        store.conn.execute("INSERT INTO test_kept VALUES ('r1')")
        clock.days_ago(90)
        events.append(store, "run.started", {}, run_id="r1")
        result = domain.prune(store, CUTOFF, paths.artifacts_dir, NOW)
        assert result.tables == {"test_ledger": 1}
        assert store.conn.execute("SELECT host FROM test_ledger").fetchall() == [("new",)]
        assert store.conn.execute("SELECT count(*) FROM test_kept").fetchone() == (1,)


def test_prune_takes_pushes_with_their_events_and_never_launders_forged_trust(paths, cli):
    from krate.store import pushes, trust

    clock = Clock()
    with open_store(paths, clock=clock) as store:
        clock.days_ago(60)
        with store.write() as w:
            for push_id in ("old", "forged"):
                event = w.append("push.finished", {
                    "push_id": push_id, "registry": "r.example", "repository": "me/app",
                    "tag": "1", "artifact": "sha256:aa", "name": "a", "manifest": "sha256:bb",
                    "provenance": None, "referrers": None, "bytes": 3,
                })  # fmt: skip
                pushes.insert(w, pushes.PushRow(push_id, "sha256:aa", "a", "r.example",
                                                "me/app", "1", "sha256:bb", None, None, 3,
                                                event.ts))  # fmt: skip
        trust.trust(store, "/p/real.toml", "a" * 64)  # 3: backed
        store.conn.execute(  # cites event 2, a push: not backed
            "INSERT INTO policy_trust VALUES ('/p/forged.toml', ?, 't', 2)", ("b" * 64,)
        )
        clock.days_ago(0)
        events.append(store, "user.note", {"message": "kept"})
        result = domain.prune(store, CUTOFF, paths.artifacts_dir, NOW)
        assert result.tables == {"pushes": 2}
        trusted, notes = trust.checked_files(store)
    assert trusted == {"/p/real.toml": "a" * 64}
    assert len(notes) == 1 and notes[0].startswith("/p/forged.toml: trust not backed")
    report = json.loads(cli("audit", "verify", "--json").out)
    assert not report["ok"] and "/p/forged.toml" in report["reason"]
