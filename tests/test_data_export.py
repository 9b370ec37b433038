"""`krate data where` and `krate data export`: every place listed, every table exported."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zipfile
from datetime import UTC, datetime

from krate.paths import Paths
from krate.privacy.export import readme
from krate.store import events, open_store


def paths_of(home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(home)})


def check_chain(lines: list[dict]) -> str:
    """The README's recipe, run on an export: the chain checks out without krate."""
    prev = None
    for e in lines:
        body = json.dumps(
            [e["seq"], e["ts"], e["kind"], e["run_id"], e["data"]],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        assert prev is None or e["prev_hash"] == prev, e["seq"]
        assert hashlib.sha256((e["prev_hash"] + "\n" + body).encode()).hexdigest() == e["hash"]
        prev = e["hash"]
    return prev


def test_where_lists_every_place_with_counts(cli, krate_home):
    cli("audit", "note", "one")
    cli("audit", "note", "two")
    (krate_home / "policy.toml").write_text("# mine\n")
    (krate_home / "artifacts" / "sha256").mkdir(parents=True)
    (krate_home / "artifacts" / "sha256" / ("ab" * 32)).write_bytes(b"x" * 10)
    with open_store(paths_of(krate_home)) as store:
        events.append(store, "credential.stored", {"account": "ghcr.io"})
        events.append(store, "credential.stored", {"account": "old.example"})
        events.append(store, "credential.removed", {"account": "old.example"})

    result = cli("data", "where", "--json")
    assert result.code == 0
    found = json.loads(result.out)
    places = {p["place"]: p for p in found["places"]}
    assert found["data_dir"] == str(krate_home)
    assert found["pending_area"] == str(krate_home) + ".pending-deletion"
    db = places["database"]
    assert db["exists"] and db["bytes"] > 0
    assert db["records"]["events"] == 5
    assert db["records"]["events_by_kind"] == {
        "credential.removed": 1,
        "credential.stored": 2,
        "user.note": 2,
    }
    assert db["records"]["tables"]["events"] == 5
    assert places["artifact store"]["records"]["artifacts"] == 1
    assert places["artifact store"]["bytes"] == 10
    assert places["user policy"]["exists"] and places["user policy"]["bytes"] == 7
    assert places["pending deletions"]["exists"] is False
    keychain = places["keychain"]
    assert keychain["records"]["accounts"] == [{"service": "krate", "account": "ghcr.io"}]
    assert "secrets never read" in keychain["note"]

    text = cli("data", "where")
    assert text.code == 0
    assert "database" in text.out and "krate/ghcr.io" in text.out


def test_where_is_read_only(cli, krate_home):
    assert cli("data", "where").code == 0
    assert not krate_home.exists()


def test_export_holds_everything_and_records_only_metadata(cli, krate_home, tmp_path):
    cli("audit", "note", "héllo")
    cli("audit", "note", "second")
    (krate_home / "policy.toml").write_text("[network]\nallow = ['example.com']\n")
    # A table added by some later migration is exported without any change to export code.
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute("CREATE TABLE later_feature (id INTEGER PRIMARY KEY, note TEXT, blob BLOB)")
    conn.execute("INSERT INTO later_feature (note, blob) VALUES ('kept', x'00ff')")
    conn.commit()
    conn.close()
    artifact = krate_home / "artifacts" / "sha256" / ("cd" * 32)
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"artifact bytes")
    head = json.loads(cli("audit", "head", "--json").out)

    out = tmp_path / "export.zip"
    result = cli("data", "export", "--out", str(out), "--with-artifacts", "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert out.stat().st_mode & 0o777 == 0o600
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        assert {
            "README.txt",
            "manifest.json",
            "events.jsonl",
            "tables/chain_head.jsonl",
            "tables/later_feature.jsonl",
            "config/policy.toml",
            f"artifacts/sha256/{'cd' * 32}",
        } <= names
        assert not any(n.startswith("tables/events") for n in names)
        lines = [json.loads(x) for x in archive.read("events.jsonl").decode().splitlines()]
        assert [e["data"].get("message") for e in lines] == ["héllo", "second"]
        assert check_chain(lines) == head["hash"]
        later = [json.loads(x) for x in archive.read("tables/later_feature.jsonl").splitlines()]
        assert later == [{"id": 1, "note": "kept", "blob": {"base64": "AP8="}}]
        assert archive.read("config/policy.toml").startswith(b"[network]")
        assert archive.read(f"artifacts/sha256/{'cd' * 32}") == b"artifact bytes"
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["chain_head"] == head and manifest["events"] == 2
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest
        text = archive.read("README.txt").decode()
        for name in names - {f"artifacts/sha256/{'cd' * 32}"}:
            assert name in text, f"README does not describe {name}"

    recorded = json.loads(cli("audit", "list", "--kind", "data.exported", "--json").out)
    assert len(recorded) == 1
    data = recorded[0]["data"]
    assert data["file"] == str(out) and data["sha256"] == report["sha256"]
    assert data["with_artifacts"] is True and data["events"] == 2
    assert "héllo" not in json.dumps(data, ensure_ascii=False)
    assert cli("audit", "verify").code == 0
    # where lists the copy the user made
    places = json.loads(cli("data", "where", "--json").out)["places"]
    assert any(p["place"] == "export" and p["path"] == str(out) and p["exists"] for p in places)


def test_export_without_artifacts_leaves_them_out(cli, krate_home, tmp_path):
    cli("audit", "note", "x")
    artifact = krate_home / "artifacts" / "sha256" / ("ef" * 32)
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"big")
    out = tmp_path / "e.zip"
    assert cli("data", "export", "--out", str(out)).code == 0
    with zipfile.ZipFile(out) as archive:
        assert not any(n.startswith("artifacts/") for n in archive.namelist())


def test_export_refuses_to_overwrite_and_leaves_no_partial_file(cli, krate_home, tmp_path):
    cli("audit", "note", "x")
    out = tmp_path / "mine.zip"
    out.write_bytes(b"precious")
    result = cli("data", "export", "--out", str(out))
    assert result.code == 1
    assert "already exists" in result.err and "never overwrites" in result.err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["krate-home", "mine.zip"]
    assert json.loads(cli("audit", "list", "--kind", "data.", "--json").out) == []


def test_export_refuses_krate_own_folder_and_missing_folder(cli, krate_home, tmp_path):
    cli("audit", "note", "x")
    inside = cli("data", "export", "--out", str(krate_home / "e.zip"))
    assert inside.code == 2 and "inside krate's own folder" in inside.err
    missing = cli("data", "export", "--out", str(tmp_path / "nope" / "e.zip"))
    assert missing.code == 2 and "does not exist" in missing.err


def test_export_of_a_fresh_install_is_valid(cli, krate_home, tmp_path):
    out = tmp_path / "empty.zip"
    assert cli("data", "export", "--out", str(out)).code == 0
    with zipfile.ZipFile(out) as archive:
        assert archive.read("events.jsonl") == b""
        assert archive.testzip() is None


def test_readme_explains_pruned_chains():
    text = readme(datetime(2026, 1, 1, tzinfo=UTC), "0", 0, "0" * 64, [], [], 0)
    assert "chain.checkpoint" in text and "64 zeros" in text


def test_info_and_where_agree_on_a_fresh_home_and_after_the_first_event(tmp_path):
    """Both read the database through one function (store/inventory.database)."""
    import os
    import subprocess

    from tests.conftest import KRATE

    home = tmp_path / "fresh-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRATE_", "XDG_"))}
    env["HOME"] = str(home)

    def both():
        info = subprocess.run([KRATE, "info", "--json"], env=env, capture_output=True, text=True)
        where = subprocess.run(
            [KRATE, "data", "where", "--json"], env=env, capture_output=True, text=True
        )
        assert info.returncode == where.returncode == 0, info.stderr + where.stderr
        places = {p["place"]: p for p in json.loads(where.stdout)["places"]}
        return json.loads(info.stdout), places

    info, places = both()
    db = places["database"]
    assert info["data_dir"] == str(home / ".local/share/krate") == places["data folder"]["path"]
    assert info["db_path"] == db["path"] and info["db_exists"] is db["exists"] is False
    assert info["db_size"] == db["bytes"] == 0
    assert info["events"] == db["records"]["events"] == 0
    assert info["schema_version"] is None and db["records"]["tables"] == {}
    assert info["data_dir_exists"] is places["data folder"]["exists"] is False
    assert list(home.iterdir()) == []  # neither created anything
    text = subprocess.run([KRATE, "info"], env=env, capture_output=True, text=True).stdout
    assert "krate.db (absent: nothing recorded yet)" in text and "(0 bytes)" not in text

    assert subprocess.run([KRATE, "audit", "note", "x"], env=env).returncode == 0
    info, places = both()
    db = places["database"]
    assert info["db_exists"] is db["exists"] is True
    assert info["db_size"] == db["bytes"] > 0
    assert info["events"] == db["records"]["events"] == 1
    assert info["schema_version"] == db["records"]["tables"]["_sqlite_migrations"] >= 1
