"""The copy of the newest head beside krate.db: written after each commit, never backwards,
never over evidence, kept in step by delete, restore, prune and export; the trust lookup
stays indexed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from krate.paths import Paths
from krate.store import events, headcopy, open_store, trust

from .conftest import run_krate


def paths_of(home: Path) -> Paths:
    return Paths(home, home)


def env(home: Path, **extra: str) -> dict:
    return dict(os.environ, KRATE_HOME=str(home), **extra)


def head_of(home: Path) -> events.Head:
    with open_store(paths_of(home), readonly=True) as store:
        return events.head(store)


def copy_of(home: Path):
    return headcopy.read(home / headcopy.NAME)


def verify_json(home: Path) -> tuple[int, dict]:
    done = run_krate("audit", "verify", "--json", env=env(home))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_each_transaction_leaves_the_copy_at_the_head_private(krate_home):
    with open_store(paths_of(krate_home)) as store:
        for i in range(3):
            event = events.append(store, "user.note", {"i": i})
            assert copy_of(krate_home) == (event.seq, event.hash)
        with store.write():
            pass  # a transaction that appends nothing leaves the copy alone
    path = krate_home / headcopy.NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == f"krate-head/1 {3:020d} {event.hash}\n"
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "matches"


WRITER = textwrap.dedent(
    """
    import sys
    from krate.paths import Paths
    from krate.store import events, open_store
    home, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open_store(Paths.from_env({"KRATE_HOME": home})) as store:
        for i in range(n):
            events.append(store, "test.concurrent", {"worker": tag, "i": i})
    """
)


def test_parallel_writers_never_move_the_copy_backwards(krate_home):
    with open_store(paths_of(krate_home)) as store:
        events.append(store, "user.note", {"first": True})
    seen: list[headcopy.Copy] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            found = copy_of(krate_home)
            assert isinstance(found, headcopy.Copy), found  # never torn, never missing
            seen.append(found)

    watcher = threading.Thread(target=watch)
    watcher.start()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(krate_home), str(w), "60"])
        for w in range(8)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    stop.set()
    watcher.join()
    assert codes == [0] * 8
    assert len(seen) > 10
    seqs = [c.seq for c in seen]
    assert seqs == sorted(seqs), "the copy went backwards"
    head = head_of(krate_home)
    assert copy_of(krate_home) == (head.seq, head.hash) and head.seq == 481
    with open_store(paths_of(krate_home), readonly=True) as store:
        chain = {e.seq: e.hash for e in events.query(store)}
    assert all(chain[c.seq] == c.hash for c in seen)  # every copy seen named a real event
    assert verify_json(krate_home)[0] == 0


KILLED_AFTER_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from krate.paths import Paths
    from krate.store import events, headcopy, open_store
    headcopy.advance = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    with open_store(Paths.from_env({"KRATE_HOME": sys.argv[1]})) as store:
        events.append(store, "user.note", {"message": "committed, copy not yet written"})
    """
)


def test_a_krate_killed_between_commit_and_copy_leaves_a_copy_verify_accepts(krate_home):
    with open_store(paths_of(krate_home)) as store:
        before = events.append(store, "user.note", {"i": 1})
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_COMMIT, str(krate_home)])
    assert killed.returncode == -signal.SIGKILL
    assert head_of(krate_home).seq == 2 and copy_of(krate_home) == (before.seq, before.hash)
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "behind"
    text = run_krate("audit", "verify", env=env(krate_home))
    assert text.returncode == 0 and "1 event behind" in text.stderr
    assert run_krate("audit", "note", "next", env=env(krate_home)).returncode == 0
    head = head_of(krate_home)
    assert copy_of(krate_home) == (head.seq, head.hash)  # caught up by the next recording


def test_a_copy_that_does_not_fit_the_record_is_kept_as_evidence(krate_home):
    with open_store(paths_of(krate_home)) as store:
        for i in range(3):
            events.append(store, "user.note", {"i": i})
    path = krate_home / headcopy.NAME
    path.write_bytes(headcopy.encode(2, "ab" * 32))  # event 2 with another hash
    run_krate("audit", "note", "more", env=env(krate_home))
    assert copy_of(krate_home) == (2, "ab" * 32)  # not overwritten
    code, report = verify_json(krate_home)
    assert code == 1 and report["problem"] == "head_copy" and "rewritten" in report["reason"]
    path.write_text("something else\n")
    run_krate("audit", "note", "more", env=env(krate_home))
    assert path.read_text() == "something else\n"
    code, report = verify_json(krate_home)
    assert code == 1 and "damaged" in report["reason"]
    # The documented way to accept the store as it is: move the copy aside.
    path.rename(krate_home.parent / "krate.head.old")
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "absent"
    run_krate("audit", "note", "new baseline", env=env(krate_home))
    assert verify_json(krate_home)[1]["head_copy"]["state"] == "matches"


def test_delete_restore_prune_and_export_keep_the_copy_in_step(krate_home, tmp_path):
    e = env(krate_home)
    for i in range(3):
        assert run_krate("audit", "note", f"n{i}", env=e).returncode == 0
    # A krate still recording (a long run) while the data is deleted: its copy follows its db.
    late = open_store(paths_of(krate_home))
    deleted = run_krate("data", "delete", "--yes", env=e)
    assert deleted.returncode == 0, deleted.stderr
    events.append(late, "run.finished", {"late": True})
    late.close()
    assert not (krate_home / headcopy.NAME).exists()
    code, report = verify_json(krate_home)
    assert code == 0 and report["events"] == 0  # a fresh start, as delete promises
    restored = run_krate("data", "restore", env=e)
    assert restored.returncode == 0, restored.stderr
    code, report = verify_json(krate_home)
    assert code == 0 and report["events"] == 4 and report["head_copy"]["state"] == "matches"

    pruned = run_krate("data", "prune", "--older-than", "0s", "--yes", env=e)
    assert pruned.returncode == 0, pruned.stderr
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "matches", report
    exported = run_krate("data", "export", "--out", str(tmp_path / "x.zip"), env=e)
    assert exported.returncode == 0, exported.stderr
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "matches"
    head = head_of(krate_home)
    assert copy_of(krate_home) == (head.seq, head.hash)


def test_restore_over_a_fresh_store_that_only_has_a_copy(krate_home):
    """A fresh data folder holding no events is replaced by the restore, copy and all."""
    e = env(krate_home)
    run_krate("audit", "note", "kept", env=e)
    assert run_krate("data", "delete", "--yes", env=e).returncode == 0
    krate_home.mkdir(mode=0o700, exist_ok=True)
    (krate_home / headcopy.NAME).write_bytes(headcopy.encode(0, "0" * 64))
    restored = run_krate("data", "restore", env=e)
    assert restored.returncode == 0, restored.stderr
    assert verify_json(krate_home)[0] == 0


# ---------------------------------------------------------------- cost


def _steps(store, call) -> int:
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    store.conn.set_progress_handler(tick, 10)
    try:
        call()
    finally:
        store.conn.set_progress_handler(None, 10)
    return count[0]


@pytest.mark.parametrize("n", [2_000])
def test_the_trust_lookup_does_not_walk_the_chain(krate_home, n):
    """SQLite's work for the run path's trust check is the same for 2,000 and 20,000 events."""
    work = []
    with open_store(paths_of(krate_home)) as store:
        trust.trust(store, "/p/krate.toml", "a" * 64)
        for size in (n, 10 * n):
            with store.write() as writer:
                for i in range(size - events.count(store)):
                    writer.append("user.note", {"i": i}, run_id=f"r{i % 50}")
            assert trust.checked_files(store) == ({"/p/krate.toml": "a" * 64}, [])
            work.append(_steps(store, lambda: trust.checked_files(store)))
    assert work[1] <= work[0] * 1.5 + 10, work


def test_every_index_table_is_cross_checked(krate_home):
    """A migration that adds a table must register its check in store/crosscheck.py."""
    from krate.store import crosscheck
    from krate.store.inventory import tables

    with open_store(paths_of(krate_home)) as store:
        found = set(tables(store.conn))
    assert found - crosscheck.NOT_INDEXES == set(crosscheck.CHECKS)


def test_a_copy_held_locked_by_someone_else_never_hangs_krate(krate_home):
    import fcntl
    import time

    run_krate("audit", "note", "first", env=env(krate_home))
    before = copy_of(krate_home)
    with (krate_home / headcopy.NAME).open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        begin = time.monotonic()
        done = run_krate("audit", "note", "while locked", env=env(krate_home), timeout=30)
        waited = time.monotonic() - begin
    assert done.returncode == 0, done.stderr
    assert waited < headcopy.LOCK_WAIT_S + 5
    assert copy_of(krate_home) == before  # left behind, never overwritten unlocked
    code, report = verify_json(krate_home)
    assert code == 0 and report["head_copy"]["state"] == "behind"
