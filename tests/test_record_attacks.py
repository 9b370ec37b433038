"""The record against a local user who can write krate.db.

Each test attacks a real SQLite file the way a same-user process could (the
sqlite3 shell, `cp`, `rm`, a hex editor) and then asks the installed `krate`,
in a subprocess, whether the record still checks out. See docs/audit.md for
what such a user can and cannot do.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from krate.paths import Paths
from krate.store import events, open_store

from .conftest import as_root, run_krate


def env(home: Path) -> dict:
    return dict(os.environ, KRATE_HOME=str(home))


def krate(home: Path, *args: str):
    return run_krate(*args, env=env(home))


def sql(db: Path, statement: str, *params) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement, params)
    conn.close()


def notes(home: Path, n: int) -> None:
    with open_store(Paths(home, home)) as store:
        for i in range(n):
            events.append(store, "user.note", {"message": f"note {i}"})


def verify(home: Path) -> tuple[int, str, dict]:
    human = krate(home, "audit", "verify")
    assert "Traceback" not in human.stderr, human.stderr
    as_json = krate(home, "audit", "verify", "--json")
    data = json.loads(as_json.stdout) if as_json.stdout.strip() else {}
    assert as_json.returncode == human.returncode
    return human.returncode, human.stdout + human.stderr, data


def assert_detected(home: Path, *words: str) -> str:
    code, text, _ = verify(home)
    assert code == 1, text
    for word in words:
        assert word in text, text
    return text


# ---------------------------------------------------------------- emptied, replaced, rolled back


def test_emptied_store_is_detected(krate_home):
    notes(krate_home, 5)
    assert verify(krate_home)[0] == 0
    db = krate_home / "krate.db"
    sql(db, "DELETE FROM events")
    sql(db, "DELETE FROM chain_head")
    assert_detected(krate_home, "event 5")


def test_deleted_database_is_detected(krate_home):
    notes(krate_home, 5)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{krate_home / 'krate.db'}{suffix}").unlink(missing_ok=True)
    assert_detected(krate_home, "event 5")


def test_database_replaced_by_a_fresh_one_is_detected_and_stays_detected(krate_home):
    notes(krate_home, 5)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{krate_home / 'krate.db'}{suffix}").unlink(missing_ok=True)
    # krate itself then creates a fresh store and records in it: the copy is not overwritten.
    assert krate(krate_home, "audit", "note", "fresh").returncode == 0
    assert krate(krate_home, "audit", "note", "fresher").returncode == 0
    assert_detected(krate_home, "event 5")


def test_truncated_store_is_detected_even_with_a_consistent_chain_head(krate_home):
    notes(krate_home, 8)
    db = krate_home / "krate.db"
    with sqlite3.connect(db) as conn:
        (hash5,) = conn.execute("SELECT hash FROM events WHERE seq = 5").fetchone()
        conn.execute("DELETE FROM events WHERE seq > 5")
        conn.execute("UPDATE chain_head SET seq = 5, hash = ?", (hash5,))
    conn.close()
    assert_detected(krate_home, "event 8")


def test_rolled_back_store_is_detected(krate_home):
    notes(krate_home, 3)
    db = krate_home / "krate.db"
    old = krate_home.parent / "old-krate.db"
    with sqlite3.connect(db) as source, sqlite3.connect(old) as target:
        source.backup(target)  # what `cp krate.db` gives after a checkpoint
    source.close()
    target.close()
    notes(krate_home, 3)  # e.g. the events of a run someone wants forgotten
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(old, db)
    assert_detected(krate_home, "event 6")


def test_rewritten_tail_is_detected(krate_home):
    """Events 4.. replaced by others, correctly chained, with a matching chain_head."""
    notes(krate_home, 5)
    db = krate_home / "krate.db"
    with sqlite3.connect(db) as conn:
        ts, prev = conn.execute("SELECT ts, hash FROM events WHERE seq = 3").fetchone()
        conn.execute("DELETE FROM events WHERE seq > 3")
        for seq in (4, 5):
            digest = events.row_hash(prev, seq, ts, "user.note", None, '{"message":"forged"}')
            conn.execute(
                "INSERT INTO events VALUES (?, ?, 'user.note', NULL, ?, ?, ?)",
                (seq, ts, '{"message":"forged"}', prev, digest),
            )
            prev = digest
        conn.execute("UPDATE chain_head SET seq = 5, hash = ?", (prev,))
    conn.close()
    assert_detected(krate_home, "event 5")


# ---------------------------------------------------------------- damaged pages


def _page_of(db: Path, name: str) -> tuple[int, int]:
    """(offset, size) of the root page of table or index `name`, with the WAL folded in."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()
    conn.close()
    return (root - 1) * page_size, page_size


def _many_notes(home: Path, n: int = 3000) -> None:
    with open_store(Paths(home, home)) as store, store.write() as writer:
        for i in range(n):
            writer.append("user.note", {"message": f"note {i}"})


@pytest.mark.parametrize("target", ["events_kind", "events_run_id"])
def test_a_damaged_index_page_fails_verify_with_what_to_do(krate_home, target):
    """The chain walk never reads these pages, so without SQLite's own check this verified."""
    _many_notes(krate_home)
    db = krate_home / "krate.db"
    offset, size = _page_of(db, target)
    with db.open("r+b") as handle:
        handle.seek(offset + 8)
        handle.write(b"\xa5" * (size - 8))
    text = assert_detected(krate_home, "damaged")
    assert "krate.head" in text and "move" in text


def test_a_damaged_events_page_is_a_clear_message_not_a_traceback(krate_home):
    _many_notes(krate_home)
    db = krate_home / "krate.db"
    offset, size = _page_of(db, "events")
    with db.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * size)
    text = assert_detected(krate_home, "krate.head")
    assert text.startswith("krate: ") and text.count("\n") == 1


# ---------------------------------------------------------------- trust


WIDENING = '[network]\nallow = ["evil.example"]\n'


@pytest.fixture
def project(tmp_path, krate_home):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "krate.toml").write_text(WIDENING)
    return ws


def _explain(home: Path, ws: Path) -> tuple[str, str]:
    out = run_krate("policy", "explain", "net", "evil.example", "--json", env=env(home), cwd=ws)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["verdict"], out.stderr


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _forge_trust(db: Path, path: Path, sha256: str, seq: int) -> None:
    sql(
        db,
        "INSERT OR REPLACE INTO policy_trust (path, sha256, trusted_at, seq) VALUES (?, ?, ?, ?)",
        str(path),
        sha256,
        "2026-01-01T00:00:00.000000Z",
        seq,
    )


def _trust_via_krate(home: Path, ws: Path, file: str = "krate.toml") -> None:
    done = run_krate("policy", "trust", file, env=env(home), cwd=ws)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "how", ["no event", "unrelated event", "another file's event", "revoked", "edited event"]
)
def test_a_trust_row_the_chain_does_not_back_is_not_honoured(krate_home, project, how):
    toml = project / "krate.toml"
    db = krate_home / "krate.db"
    other = project / "sub" / "krate.toml"
    other.parent.mkdir()
    other.write_text(WIDENING + "# another file\n")
    notes(krate_home, 1)  # event 1: an unrelated note
    if how == "no event":
        _forge_trust(db, toml, _digest(toml), 999)
    elif how == "unrelated event":
        _forge_trust(db, toml, _digest(toml), 1)
    elif how == "another file's event":
        _trust_via_krate(krate_home, project, "sub/krate.toml")  # event 2
        _forge_trust(db, toml, _digest(toml), 2)
    elif how == "revoked":
        _trust_via_krate(krate_home, project)  # event 2
        assert _explain(krate_home, project)[0] == "allow"
        assert run_krate("policy", "untrust", env=env(krate_home), cwd=project).returncode == 0
        _forge_trust(db, toml, _digest(toml), 2)  # the old, real event, cited again
    elif how == "edited event":
        _trust_via_krate(krate_home, project, "sub/krate.toml")  # event 2, for the other file
        data = json.dumps({"path": str(toml), "sha256": _digest(toml)}, separators=(",", ":"))
        sql(db, "UPDATE events SET data = ? WHERE seq = 2", data)
        sql(db, "UPDATE policy_trust SET path = ?, sha256 = ?", str(toml), _digest(toml))
    verdict, stderr = _explain(krate_home, project)
    assert verdict == "deny"
    shown = run_krate("policy", "show", "--json", env=env(krate_home), cwd=project)
    ignored = " ".join(json.loads(shown.stdout)["ignored"])
    assert "not backed by the record" in ignored and str(toml) in ignored
    # An edited event breaks the chain itself, which verify reports first.
    assert_detected(
        krate_home, *(["event 2", "edited"] if how == "edited event" else ["policy_trust"])
    )


def test_trust_recorded_by_krate_is_honoured_and_verifies(krate_home, project):
    _trust_via_krate(krate_home, project)
    assert _explain(krate_home, project)[0] == "allow"
    shown = run_krate("policy", "show", "--json", env=env(krate_home), cwd=project)
    assert json.loads(shown.stdout)["ignored"] == []
    assert verify(krate_home)[0] == 0


def test_a_run_does_not_honour_a_forged_trust_row_and_says_so(box):
    """For real: the forged trust would let the workload write outside its workspace."""
    outside = box.home / "outside"
    outside.mkdir()
    toml = box.ws / "krate.toml"
    toml.write_text('[filesystem]\nallow_write = ["~/outside"]\n')
    if box.user:
        from .conftest import chown_tree

        chown_tree(box.base, box.user)
    assert box.krate("audit", "note", "start").returncode == 0
    _forge_trust(box.krate_home / "krate.db", toml, _digest(toml), 1)
    out = box.sh(f"echo pwned > {outside}/planted; echo done")
    assert out.stdout.endswith("done\n"), out.stderr
    assert not (outside / "planted").exists()
    assert "not backed by the record" in out.stderr
    assert any("not backed by the record" in n for n in box.last_run()["ignored"])
    # The same file trusted through krate widens the policy as it should.
    box.krate("policy", "trust")
    out = box.sh(f"echo ok > {outside}/planted")
    assert out.returncode == 0, out.stderr
    assert (outside / "planted").read_text() == "ok\n"


# ---------------------------------------------------------------- index tables


@pytest.fixture
def recorded(krate_home, tmp_path):
    """One real run (exit 3) and one real build, through the installed krate."""
    ws = tmp_path / "ws"
    ws.mkdir()
    ran = run_krate(
        *as_root(["run", "--no-network"]), "--", "sh", "-c", "exit 3", env=env(krate_home), cwd=ws
    )
    assert ran.returncode == 3, ran.stderr
    built = run_krate(
        *as_root(["build"]), "--out", "dist", "--",
        "sh", "-c", "mkdir -p dist && echo x > dist/a.txt",
        env=env(krate_home), cwd=ws,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert verify(krate_home)[0] == 0
    return krate_home / "krate.db"


INDEX_ATTACKS = {
    "runs: exit code rewritten": "UPDATE runs SET exit_code = 0 WHERE exit_code = 3",
    "runs: command rewritten": "UPDATE runs SET argv = '[\"true\"]' WHERE exit_code = 3",
    "runs: still running": "UPDATE runs SET status = 'running', finished = NULL "
    "WHERE exit_code = 3",
    "runs: row deleted": "DELETE FROM runs WHERE exit_code = 3",
    "runs: command not JSON": "UPDATE runs SET argv = 'sh -c exit' WHERE exit_code = 3",
    "runs: row made up": "INSERT INTO runs (id, started, status, argv, cwd, workspace, backend) "
    "VALUES ('01made0up0000000000000000', '2026-01-01T00:00:00.000000Z', 'finished', "
    "'[\"make\"]', '/', '/', 'bubblewrap')",
    "builds: statement edited": "UPDATE builds SET statement = "
    "replace(statement, 'a.txt', 'b.txt')",
    "builds: exit status": "UPDATE builds SET exit_status = 1",
    "builds: row deleted": "DELETE FROM builds",
    "artifacts: digest": "UPDATE artifacts SET digest = 'sha256:' || lower(hex(randomblob(32)))",
    "artifacts: row made up": "INSERT INTO artifacts (digest, size, name, build_id, stored_at) "
    "SELECT digest, size, 'dist/evil', build_id, stored_at FROM artifacts",
    "pushes: row made up": "INSERT INTO pushes VALUES ('p1', 'sha256:00', 'dist/a.txt', "
    "'ghcr.io', 'me/app', '1.0', 'sha256:11', NULL, NULL, 10, '2026-01-01T00:00:00.000000Z')",
}


@pytest.mark.parametrize("attack", sorted(INDEX_ATTACKS))
def test_index_rows_that_disagree_with_their_events_fail_verify(recorded, krate_home, attack):
    with sqlite3.connect(recorded) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        assert conn.execute(INDEX_ATTACKS[attack]).rowcount >= 1
    conn.close()
    assert_detected(krate_home, attack.split(":")[0])
