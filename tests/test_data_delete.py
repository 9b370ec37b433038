"""`krate data delete / restore`: the grace period, exact restore, purge without a trace,
and kills at chosen points leaving the old or the new state."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from krate import privacy
from krate.errors import KrateError
from krate.paths import Paths
from krate.privacy import deletion
from krate.store import events, open_store
from tests.conftest import run_krate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def paths(krate_home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(krate_home)})


def area(krate_home: Path) -> Path:
    return krate_home.with_name(krate_home.name + ".pending-deletion")


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and needle in path.read_bytes():
                found.append(path)
    return found


def state(cli) -> tuple[int, dict]:
    return len(json.loads(cli("audit", "list", "--json").out)), json.loads(
        cli("audit", "head", "--json").out
    )


def test_export_delete_restore_round_trip(cli, krate_home, tmp_path):
    for i in range(5):
        cli("audit", "note", f"note {i}")
    (krate_home / "policy.toml").write_text("# my policy\n")
    out = tmp_path / "before-delete.zip"
    assert cli("data", "export", "--out", str(out)).code == 0
    count, head = state(cli)
    assert count == 6 and head["seq"] == 6

    deleted = cli("data", "delete", "--yes")
    assert deleted.code == 0, deleted
    assert "restore" in deleted.err
    # krate is as freshly installed: nothing under the data folder, nothing listed
    assert not krate_home.exists()
    assert state(cli) == (0, {"seq": 0, "hash": "0" * 64})
    pending = [p for p in area(krate_home).iterdir()]
    assert len(pending) == 1 and (pending[0] / "policy.toml").exists()
    assert area(krate_home).stat().st_mode & 0o777 == 0o700
    where = json.loads(cli("data", "where", "--json").out)["places"]
    assert [p["path"] for p in where if p["place"] == "pending deletion"] == [str(pending[0])]

    restored = cli("data", "restore")
    assert restored.code == 0, restored
    assert state(cli) == (count, head)
    assert cli("audit", "verify").code == 0
    assert (krate_home / "policy.toml").read_text() == "# my policy\n"
    assert not area(krate_home).exists()
    with zipfile.ZipFile(out) as archive:
        assert len(archive.read("events.jsonl").splitlines()) == 5  # taken before data.exported


def test_delete_without_terminal_or_yes_refuses(krate_home):
    assert run_krate("audit", "note", "keep me").returncode == 0
    result = run_krate("data", "delete", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "no terminal to ask on; pass --yes" in result.stderr
    assert (krate_home / "krate.db").exists() and not area(krate_home).exists()


def test_delete_of_nothing_is_not_an_error(cli, krate_home):
    result = cli("data", "delete", "--yes")
    assert result.code == 0 and "nothing to delete" in result.err
    assert not area(krate_home).exists()


def test_purge_now_leaves_no_trace(cli, krate_home, tmp_path):
    marker = f"MARKER-{uuid.uuid4().hex}"
    cli("audit", "note", marker)
    for i in range(50):
        cli("audit", "note", f"filler {i}")
    # Keep a connection with its own uncheckpointed WAL frames holding the marker.
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE scratch (t TEXT)")
    conn.execute("INSERT INTO scratch VALUES (?)", (marker,))
    conn.commit()
    assert files_containing(krate_home, marker.encode())
    result = run_krate("data", "delete", "--now", "--yes")
    conn.close()
    assert result.returncode == 0, result.stderr
    assert "permanently" in result.stderr
    assert not area(krate_home).exists()
    cli("audit", "note", "fresh start")  # krate recreates its folder, as freshly installed
    assert files_containing(tmp_path, marker.encode()) == []
    assert state(cli)[0] == 1


def test_purge_after_grace_period_by_next_invocation_leaves_no_trace(krate_home, tmp_path):
    marker = f"MARKER-{uuid.uuid4().hex}"
    assert run_krate("audit", "note", marker).returncode == 0
    assert run_krate("data", "delete", "--yes").returncode == 0
    (entry,) = area(krate_home).iterdir()
    old = deletion.stamp_of(datetime.now(UTC) - timedelta(days=7, seconds=1))
    entry.rename(entry.with_name(old))
    assert files_containing(tmp_path, marker.encode())
    # The next invocation, whatever the command, purges it (the store itself is untouched).
    assert run_krate("audit", "list").returncode == 0
    assert not area(krate_home).exists()
    assert not krate_home.exists()
    assert files_containing(tmp_path, marker.encode()) == []


def test_seven_day_rule_with_a_controllable_clock(paths, krate_home):
    with open_store(paths) as store:
        events.append(store, "user.note", {"message": "x"})
        head = events.head(store)
    result = deletion.delete(paths, T0)
    assert result.purge_after == T0 + timedelta(days=7)
    assert privacy.purge_expired(paths, T0 + timedelta(days=7) - timedelta(seconds=1)) == []
    restored = deletion.restore(paths, T0 + timedelta(days=6, hours=23))
    assert restored.deleted_at == T0
    with open_store(paths) as store:
        assert events.head(store) == head

    deletion.delete(paths, T0)
    assert privacy.purge_expired(paths, T0 + timedelta(days=7)) == [deletion.stamp_of(T0)]
    assert not area(krate_home).exists() and not krate_home.exists()
    assert privacy.purge_expired(paths, T0 + timedelta(days=8)) == []


def test_restore_after_expiry_is_a_clear_error(paths, krate_home):
    with open_store(paths) as store:
        events.append(store, "user.note", {"message": "x"})
    deletion.delete(paths, T0)
    with pytest.raises(KrateError) as raised:
        deletion.restore(paths, T0 + timedelta(days=7, seconds=1))
    message = str(raised.value)
    assert "passed its 7-day grace period" in message and "cannot be restored" in message
    assert not area(krate_home).exists() and not krate_home.exists()
    with pytest.raises(KrateError, match="nothing to restore"):
        deletion.restore(paths, T0 + timedelta(days=8))


def test_restore_after_expiry_through_the_cli(krate_home):
    assert run_krate("audit", "note", "x").returncode == 0
    assert run_krate("data", "delete", "--yes").returncode == 0
    (entry,) = area(krate_home).iterdir()
    entry.rename(entry.with_name(deletion.stamp_of(datetime.now(UTC) - timedelta(days=8))))
    result = run_krate("data", "restore")
    assert result.returncode == 1
    assert result.stderr.startswith("krate: the deletion of ")
    assert "grace period" in result.stderr and "cannot be restored" in result.stderr
    assert not area(krate_home).exists()


def test_restore_refuses_to_overwrite_new_data(cli, krate_home):
    cli("audit", "note", "old")
    assert cli("data", "delete", "--yes").code == 0
    cli("audit", "note", "new since")
    result = cli("data", "restore")
    assert result.code == 1 and "new data since the deletion" in result.err
    assert "--from" in result.err
    # following the advice works: the new data becomes a pending deletion too
    (old,) = area(krate_home).iterdir()
    assert cli("data", "delete", "--yes").code == 0
    assert cli("data", "restore", "--from", old.name).code == 0
    listed = json.loads(cli("audit", "list", "--json").out)
    assert [e["data"]["message"] for e in listed] == ["old"]
    assert len(list(area(krate_home).iterdir())) == 1


def test_restore_with_nothing_pending(cli):
    result = cli("data", "restore")
    assert result.code == 1 and "nothing to restore" in result.err


def test_delete_now_also_purges_earlier_pending_deletions(cli, krate_home, tmp_path):
    cli("audit", "note", "first life")
    assert cli("data", "delete", "--yes").code == 0
    cli("audit", "note", "second life")
    assert cli("data", "delete", "--now", "--yes").code == 0
    assert not area(krate_home).exists() and not krate_home.exists()
    assert files_containing(tmp_path, b"life") == []


# -- a separate config folder (Linux without KRATE_HOME) ---------------------------------


@pytest.fixture
def split_env(tmp_path, monkeypatch):
    """Data and config in different folders, as platformdirs gives them on Linux."""
    monkeypatch.delenv("KRATE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    found = Paths.from_env(os.environ)
    assert found.data_dir != found.config_dir
    return found


def test_separate_config_folder_moves_and_returns_with_the_data(split_env, cli):
    cli("audit", "note", "x")
    split_env.config_dir.mkdir(parents=True)
    split_env.user_policy.write_text("# policy\n")
    count, head = state(cli)
    assert cli("data", "delete", "--yes").code == 0
    assert not split_env.config_dir.exists() and not split_env.data_dir.exists()
    assert cli("data", "restore").code == 0
    assert split_env.user_policy.read_text() == "# policy\n"
    assert state(cli) == (count, head)


# -- kills at chosen points ---------------------------------------------------------------


def crash(point: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KRATE_TEST_CRASH_AT=point)
    return run_krate(*args, env=env)


@pytest.mark.parametrize(
    ("point", "args"),
    [
        ("delete.moved", ("data", "delete", "--yes")),
        ("purge.keychain-done", ("data", "delete", "--now", "--yes")),
        ("purge.partial", ("data", "delete", "--now", "--yes")),
    ],
)
def test_killed_delete_leaves_the_new_state_once_committed(krate_home, tmp_path, point, args):
    marker = f"MARKER-{uuid.uuid4().hex}"
    for i in range(20):
        assert run_krate("audit", "note", f"{marker} {i}").returncode == 0
    before = run_krate("audit", "head", "--json").stdout
    killed = crash(point, *args)
    assert killed.returncode == -9, killed.stderr  # it died at the named point
    # committed: the data folder is gone as a whole, never half there
    assert not krate_home.exists()
    assert json.loads(run_krate("audit", "list", "--json").stdout) == []
    if point == "delete.moved":
        assert run_krate("data", "restore").returncode == 0
        assert run_krate("audit", "head", "--json").stdout == before
        assert run_krate("audit", "verify").returncode == 0
        return
    # an interrupted purge is finished by the next invocation, whatever it is
    assert run_krate("audit", "note", "after").returncode == 0
    assert not area(krate_home).exists()
    assert files_containing(tmp_path, marker.encode()) == []
    assert run_krate("audit", "verify").returncode == 0


def test_killed_delete_before_commit_keeps_the_old_state(split_env, tmp_path):
    env = dict(os.environ)
    assert run_krate("audit", "note", "kept", env=env).returncode == 0
    split_env.config_dir.mkdir(parents=True)
    split_env.user_policy.write_text("# policy\n")
    before = run_krate("audit", "head", "--json", env=env).stdout
    killed = crash("delete.config-moved", "data", "delete", "--yes")
    assert killed.returncode == -9
    # the next recording invocation rolls the uncommitted move back
    assert run_krate("audit", "note", "next", env=env).returncode == 0
    assert split_env.user_policy.read_text() == "# policy\n"
    assert not (split_env.data_dir / ".krate-config").exists()
    listed = json.loads(run_krate("audit", "list", "--json", env=env).stdout)
    assert [e["data"]["message"] for e in listed] == ["kept", "next"]
    assert listed[0]["hash"] == json.loads(before)["hash"]
    pending = split_env.data_dir.with_name("krate.pending-deletion")
    assert not pending.exists()


def test_delete_now_lists_then_removes_krate_keychain_entries(krate_home, keychain):
    env = keychain.env()
    secret = json.dumps({"username": "me", "password": "s3cret"})
    keychain.store("krate", "ghcr.io", secret)
    keychain.store("other", "ghcr.io", secret)
    assert run_krate("audit", "note", "x", env=env).returncode == 0
    with open_store(Paths.from_env({"KRATE_HOME": str(krate_home)})) as store:
        events.append(store, "credential.stored", {"account": "ghcr.io", "service": "krate"})
    listed = run_krate("data", "where", "--json", env=env)
    places = json.loads(listed.stdout)["places"]
    kc = [p for p in places if p["place"] == "keychain"][0]
    assert kc["records"]["accounts"] == [{"service": "krate", "account": "ghcr.io"}]
    result = run_krate("data", "delete", "--now", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "keychain entry: service krate, account ghcr.io" in result.stderr  # listed first
    assert "s3cret" not in result.stderr + result.stdout
    # krate's entry is gone from the Secret Service, and only krate's
    assert keychain.entries() == {}
    assert keychain.entries("other") == {"ghcr.io": json.loads(secret)}


def test_automatic_purge_removes_keychain_entries_once_configured(paths, keychain, monkeypatch):
    from krate.privacy import keychain as privacy_keychain

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", keychain.address)
    keychain.store("krate", "reg.example", "{}")
    with open_store(paths) as store:
        events.append(store, "credential.stored", {"account": "reg.example"})
    deletion.delete(paths, T0)
    try:
        privacy_keychain.configure("keyring.backends.SecretService.Keyring")
        assert privacy.purge_expired(paths, T0 + timedelta(days=8)) == [deletion.stamp_of(T0)]
    finally:
        privacy_keychain.configure(None)
    assert keychain.entries() == {}
