"""`krate audit` and `krate info` through the real entry point, against a real SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta

from krate.paths import Paths
from krate.store import events, open_store


def test_note_list_show_head_verify(cli, krate_home):
    assert cli("audit", "note", "first").out.strip() == "1"
    assert cli("audit", "note", "second").out.strip() == "2"
    listed = json.loads(cli("audit", "list", "--json").out)
    assert [e["data"]["message"] for e in listed] == ["first", "second"]
    assert set(listed[0]) == {"seq", "ts", "kind", "run_id", "data", "hash", "prev_hash"}
    assert listed[0]["kind"] == "user.note" and listed[0]["ts"].endswith("Z")

    lines = cli("audit", "list", "--jsonl").out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]

    shown = json.loads(cli("audit", "show", "2", "--json").out)
    assert shown == listed[1]

    head = json.loads(cli("audit", "head", "--json").out)
    assert head == {"seq": 2, "hash": listed[1]["hash"]}

    verified = cli("audit", "verify")
    assert verified.code == 0
    assert verified.out.strip() == f"2 events, chain intact, head {listed[1]['hash']}"


def test_empty_json_list_is_an_empty_array(cli):
    result = cli("audit", "list", "--json")
    assert result.code == 0 and json.loads(result.out) == []


def test_read_only_commands_never_write(cli, krate_home):
    for args in (["audit", "list"], ["audit", "verify"], ["audit", "head"], ["info", "--json"]):
        cli(*args)
    assert not krate_home.exists(), "a read-only command created the data folder"
    cli("audit", "note", "x")

    # SQLite's own shared-memory index and an empty WAL may appear on a read; no content may change.
    def snapshot():
        return {
            p.name: p.read_bytes()
            for p in krate_home.iterdir()
            if p.name != "krate.db-shm" and p.stat().st_size
        }

    before = snapshot()
    for args in (["audit", "list"], ["audit", "verify"], ["audit", "head"], ["info"]):
        assert cli(*args).code == 0
    assert snapshot() == before


def test_list_filters_and_limit(cli, krate_home):
    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    now = datetime.now(UTC)
    clock_values = iter(
        [now - timedelta(days=3), now - timedelta(hours=2), now - timedelta(minutes=5)]
    )
    with open_store(paths, clock=lambda: next(clock_values)) as store:
        events.append(store, "run.started", {}, run_id="01A")
        events.append(store, "run.finished", {}, run_id="01A")
        events.append(store, "user.note", {"message": "m"})
    seqs = lambda *a: [e["seq"] for e in json.loads(cli("audit", "list", "--json", *a).out)]  # noqa: E731
    assert seqs("--since", "1h") == [3]
    assert seqs("--since", "1d") == [2, 3]
    assert seqs("--until", "1d") == [1]
    assert seqs("--kind", "run.") == [1, 2]
    assert seqs("--kind", "no.such.kind") == []
    assert seqs("--run", "01A") == [1, 2]
    assert seqs("--limit", "2") == [2, 3]
    day = (now - timedelta(days=1)).astimezone().strftime("%Y-%m-%d")
    assert 2 in seqs("--since", day)


def test_malformed_since_is_a_usage_error_naming_the_forms(cli):
    result = cli("audit", "list", "--since", "yesterday-ish")
    assert result.code == 2
    assert result.err.startswith("krate: invalid --since value 'yesterday-ish'")
    assert "1h" in result.err and "2026-11-01" in result.err
    assert result.out == ""


def test_json_and_jsonl_together_is_a_usage_error(cli):
    assert cli("audit", "list", "--json", "--jsonl").code == 2


def test_verify_failure_exit_code_and_json(cli, krate_home):
    for i in range(3):
        cli("audit", "note", f"n{i}")
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute('UPDATE events SET data = \'{"message":"forged"}\' WHERE seq = 2')
    conn.commit()
    conn.close()
    result = cli("audit", "verify")
    assert result.code == 1
    assert "krate: chain broken at event 2" in result.err
    report = json.loads(cli("audit", "verify", "--json").out)
    assert report["ok"] is False and report["first_bad_seq"] == 2 and report["events"] == 1
    assert cli("audit", "verify", "--json").code == 1


def test_show_missing_event_is_a_clear_error(cli):
    cli("audit", "note", "x")
    result = cli("audit", "show", "99")
    assert (
        result.code == 1
        and result.err.strip() == "krate: no event 99 (the record holds events 1..1)"
    )
    # a number too big for SQLite used to be an internal error (OverflowError)
    for seq in ("1000000000000000000000000000000", str(2**63), "0"):
        result = cli("audit", "show", seq)
        assert result.code == 1 and result.err.strip() == (
            f"krate: no event {seq} (the record holds events 1..1)"
        ), result


def test_info_json_keys(cli, krate_home):
    cli("audit", "note", "x")
    facts = json.loads(cli("info", "--json").out)
    for key in (
        "version",
        "data_dir",
        "config_dir",
        "db_path",
        "schema_version",
        "events",
        "sandbox",
        "keyring_backend",
        "telemetry",
    ):
        assert key in facts
    assert facts["telemetry"] == "none"
    assert facts["events"] == 1 and facts["schema_version"] >= 1
    assert facts["data_dir"] == str(krate_home)
    assert set(facts["sandbox"]) >= {"backend", "available"}


def test_info_honours_keyring_override(cli, monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    assert (
        json.loads(cli("info", "--json").out)["keyring_backend"] == "keyring.backends.null.Keyring"
    )


def test_files_private_whatever_the_umask(cli, krate_home):
    old = os.umask(0)
    try:
        with open_store(Paths.from_env({"KRATE_HOME": str(krate_home)})) as store:
            events.append(store, "user.note", {"message": "x"})
            # While a connection is open SQLite keeps its -wal and -shm files beside the database.
            modes = {p.name: p.stat().st_mode & 0o777 for p in krate_home.iterdir()}
    finally:
        os.umask(old)
    assert krate_home.stat().st_mode & 0o777 == 0o700
    assert modes == {
        "krate.db": 0o600,
        "krate.db-wal": 0o600,
        "krate.db-shm": 0o600,
        "krate.head": 0o600,  # the copy of the newest head (docs/audit.md)
    }
