"""Opening the store: migrations, foreign files, corrupt files, newer schemas, unusable folders."""

from __future__ import annotations

import os
import sqlite3

import pytest

from krate.errors import StoreError
from krate.paths import Paths
from krate.store import events, migrations, open_store

from .conftest import chown_tree, run_krate


def paths_for(home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(home)})


def test_migrations_apply_once_and_are_recorded(krate_home):
    paths = paths_for(krate_home)
    with open_store(paths) as store:
        first = store.schema_version
        events.append(store, "user.note", {"message": "x"})
    with open_store(paths) as store:
        assert store.schema_version == first == len(migrations.known_names())
        rows = store.conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id").fetchall()
    assert [r[0] for r in rows] == migrations.known_names()


def test_wal_busy_timeout_and_foreign_keys(krate_home):
    with open_store(paths_for(krate_home)) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_not_a_database_file_is_a_clear_error(krate_home, cli):
    krate_home.mkdir(mode=0o700)
    (krate_home / "krate.db").write_bytes(b"this is not sqlite at all, just some text" * 100)
    for args in (["audit", "note", "x"], ["audit", "list"]):
        result = cli(*args)
        assert result.code == 1
        assert str(krate_home / "krate.db") in result.err
        assert "corrupt or not a krate database" in result.err
        assert "Traceback" not in result.err


def test_foreign_sqlite_database_is_refused(krate_home, cli):
    krate_home.mkdir(mode=0o700)
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    result = cli("audit", "note", "x")
    assert result.code == 1
    assert f"{krate_home / 'krate.db'} is not a krate database" in result.err


def test_newer_schema_is_refused(krate_home, cli):
    cli("audit", "note", "x")
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('krate', '9999_from_the_future', 'now')"
    )
    conn.commit()
    conn.close()
    for args in (["audit", "note", "y"], ["audit", "verify"]):
        result = cli(*args)
        assert result.code == 1
        assert "was written by a newer krate" in result.err and "krate.db" in result.err


def test_truncated_database_is_a_clear_error(krate_home, cli):
    for i in range(50):
        cli("audit", "note", f"note {i}" * 20)
    db = krate_home / "krate.db"
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\x00garbage" * 64 + data[700:])
    result = cli("audit", "list")
    assert result.code == 1 and "krate.db" in result.err and "Traceback" not in result.err


def test_data_folder_that_is_a_file(tmp_path, monkeypatch, cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("KRATE_HOME", str(blocker))
    result = cli("audit", "note", "x")
    assert result.code == 1
    assert (
        result.err.strip()
        == f"krate: {blocker} exists but is not a folder; move it aside or set KRATE_HOME"
    )


def test_read_only_data_folder_as_an_ordinary_user(user_tmp, ordinary_user):
    """Root ignores permission bits, so this runs the real `krate` as an unprivileged user."""
    home = user_tmp / "ro-home"
    home.mkdir()
    if ordinary_user:
        chown_tree(home, ordinary_user)
    env = dict(os.environ, KRATE_HOME=str(home))
    first = run_krate("audit", "note", "x", env=env, user=ordinary_user)
    assert first.returncode == 0, first.stderr
    for name in os.listdir(home):
        os.chmod(home / name, 0o400)
    home.chmod(0o500)
    try:
        result = run_krate("audit", "note", "y", env=env, user=ordinary_user)
    finally:
        home.chmod(0o700)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("krate: ") and str(home) in lines[0]
    assert "Traceback" not in result.stderr


def test_unwritable_parent_as_an_ordinary_user(user_tmp, ordinary_user):
    parent = user_tmp / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    env = dict(os.environ, KRATE_HOME=str(parent / "krate"))
    result = run_krate("audit", "note", "x", env=env, user=ordinary_user)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"krate: cannot use data folder {parent / 'krate'}: permission denied; "
        "fix its permissions or set KRATE_HOME to a writable folder"
    )


def test_store_error_type(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(StoreError):
        open_store(Paths(blocker, blocker))
