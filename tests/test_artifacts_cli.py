"""`krate artifacts`, `krate builds` and `krate provenance` through the real entry point."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess

import pytest

from krate.provenance import statement as st

from .build_support import blob_dir, facts, record_build
from .conftest import run_krate


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def built(tmp_path):
    """Two builds: the second rebuilds dist/app.bin with new content."""
    ws = tmp_path / "ws"
    first = record_build(ws, {"dist/app.bin": b"v1", "dist/doc/readme": b"read me"}, name="one")
    second = record_build(ws, {"dist/app.bin": b"v2"}, name="two")
    return first, second


def test_list_show_and_json(cli, built):
    first, second = built
    listed = json.loads(cli("artifacts", "list", "--json").out)
    assert [(a["name"], a["digest"]) for a in listed] == [
        ("dist/app.bin", f"sha256:{sha(b'v1')}"),
        ("dist/doc/readme", f"sha256:{sha(b'read me')}"),
        ("dist/app.bin", f"sha256:{sha(b'v2')}"),
        ("dist/doc/readme", f"sha256:{sha(b'read me')}"),
    ]
    assert set(listed[0]) == {"digest", "size", "name", "build_id", "run_id", "stored_at"}
    assert listed[0]["stored_at"].endswith("Z")
    table = cli("artifacts", "list").out.splitlines()
    assert table[0].split("\t") == ["digest", "size", "name", "build", "stored (UTC)"]
    assert len(table) == 5

    # A name means the newest record of that name.
    shown = json.loads(cli("artifacts", "show", "dist/app.bin", "--json").out)
    assert shown["digest"] == f"sha256:{sha(b'v2')}" and shown["build_id"] == second.build.id
    assert shown["size"] == 2 and shown["present"] is True
    assert shown["path"] == str(blob_dir_for(shown["digest"]))
    # ... also by the last part of the name, or with ./
    assert (
        json.loads(cli("artifacts", "show", "app.bin", "--json").out)["digest"] == shown["digest"]
    )
    assert json.loads(cli("artifacts", "show", "./dist/app.bin", "--json").out)["size"] == 2
    # A full digest, bare hex, or prefix.
    v1 = sha(b"v1")
    for ref in (f"sha256:{v1}", v1, v1[:10], f"sha256:{v1[:8]}", v1.upper()):
        out = json.loads(cli("artifacts", "show", ref, "--json").out)
        assert out["digest"] == f"sha256:{v1}" and out["build_id"] == first.build.id, ref
    # Shared content lists every record.
    readme = json.loads(cli("artifacts", "show", "readme", "--json").out)
    assert len(readme["records"]) == 2
    text = cli("artifacts", "show", "dist/app.bin").out
    assert f"sha256:{sha(b'v2')}" in text and second.build.id in text


def blob_dir_for(digest: str):
    return blob_dir(__import__("pathlib").Path(os.environ["KRATE_HOME"])) / digest.split(":")[1]


def test_ambiguous_prefix_is_a_clear_error_listing_candidates(cli, tmp_path):
    contents = [f"file {i}".encode() for i in range(40)]
    by_first: dict[str, list[bytes]] = {}
    for c in contents:
        by_first.setdefault(sha(c)[0], []).append(c)
    char, pair = next((k, v[:2]) for k, v in by_first.items() if len(v) >= 2)
    record_build(tmp_path / "ws", {"dist/a": pair[0], "dist/b": pair[1]})
    result = cli("artifacts", "show", char)
    assert result.code == 1
    assert "ambiguous" in result.err
    assert f"sha256:{sha(pair[0])}" in result.err and f"sha256:{sha(pair[1])}" in result.err
    assert "dist/a" in result.err and "dist/b" in result.err
    assert result.err.count("\n") == 1 and result.err.startswith("krate: ")


def test_unknown_artifact_and_empty_lists(cli):
    assert json.loads(cli("artifacts", "list", "--json").out) == []
    assert json.loads(cli("builds", "list", "--json").out) == []
    missing = cli("artifacts", "show", "nothing-here")
    assert missing.code == 1 and "no artifact 'nothing-here'" in missing.err
    assert cli("builds", "last").code == 1
    assert cli("provenance", "sha256:" + "0" * 64).code == 1


def test_export_writes_a_verified_copy_and_refuses_to_overwrite(cli, built, tmp_path):
    dest = tmp_path / "exported.bin"
    result = cli("artifacts", "export", "dist/app.bin", "--out", str(dest))
    assert result.code == 0, result.err
    assert dest.read_bytes() == b"v2"
    shasum = subprocess.run(["sha256sum", str(dest)], capture_output=True, text=True, check=True)
    assert shasum.stdout.split()[0] == sha(b"v2")
    dest.write_bytes(b"mine")
    again = cli("artifacts", "export", sha(b"v1"), "--out", str(dest))
    assert again.code == 1 and "already exists" in again.err
    assert dest.read_bytes() == b"mine"


def test_verify_names_every_mismatch_and_missing_file(cli, built, krate_home):
    ok = cli("artifacts", "verify")
    assert ok.code == 0 and ok.out.strip() == "3 artifacts verified, all intact"
    blobs = blob_dir(krate_home)
    changed, gone = blobs / sha(b"v1"), blobs / sha(b"read me")
    changed.chmod(0o600)
    changed.write_bytes(b"tampered")
    gone.unlink()
    bad = cli("artifacts", "verify")
    assert bad.code == 1
    assert f"sha256:{sha(b'v1')} (dist/app.bin): content changed" in bad.err
    assert f"sha256:{sha(b'read me')} (dist/doc/readme): missing" in bad.err
    assert f"sha256:{sha(b'v2')}" not in bad.err
    report = json.loads(cli("artifacts", "verify", "--json").out)
    assert report["ok"] is False and report["checked"] == 3
    assert sorted((p["digest"], p["problem"].split(" ")[0]) for p in report["problems"]) == sorted(
        [(f"sha256:{sha(b'v1')}", "content"), (f"sha256:{sha(b'read me')}", "missing")]
    )
    # One artifact only.
    assert cli("artifacts", "verify", sha(b"v2")).code == 0
    single = cli("artifacts", "verify", "readme", "--json")
    assert single.code == 1 and json.loads(single.out)["problems"][0]["problem"] == "missing"


def test_verify_catches_an_edited_build_record(cli, built, krate_home):
    first, _ = built
    conn = sqlite3.connect(krate_home / "krate.db")
    statement = json.loads(first.build.statement)
    statement["predicate"]["buildDefinition"]["externalParameters"]["argv"] = ["innocent"]
    conn.execute(
        "UPDATE builds SET statement = ? WHERE id = ?",
        (st.encode(statement).decode(), first.build.id),
    )
    conn.commit()
    conn.close()
    bad = cli("artifacts", "verify")
    assert bad.code == 1
    assert f"build {first.build.id}: its statement does not match" in bad.err


def test_provenance_json_dsse_and_summary(cli, built, krate_home):
    _, second = built
    raw = run_krate("provenance", "dist/app.bin", "--json")
    assert raw.returncode == 0, raw.stderr
    payload = raw.stdout.rstrip("\n").encode()
    assert payload == second.build.statement.encode()
    assert sha(payload) == second.build.statement_sha256
    statement = json.loads(payload)
    assert st.validate(statement) == []
    assert statement["subject"][0] == {"name": "dist/app.bin", "digest": {"sha256": sha(b"v2")}}
    # The statement's digest is in the tamper-evident chain.
    recorded = json.loads(cli("audit", "list", "--kind", "build.recorded", "--json").out)
    assert recorded[-1]["data"]["statement_sha256"] == sha(payload)

    env = json.loads(cli("provenance", "dist/app.bin", "--dsse").out)
    assert env["payloadType"] == "application/vnd.in-toto+json" and env["signatures"] == []
    assert base64.b64decode(env["payload"]) == payload

    text = cli("provenance", sha(b"v2")[:12]).out
    assert "dist/app.bin" in text and second.build.id in text and "make dist" in text


def test_builds_list_show_last(cli, built):
    first, second = built
    listed = json.loads(cli("builds", "list", "--json").out)
    assert [b["id"] for b in listed] == [first.build.id, second.build.id]
    assert "statement" not in listed[0] and listed[0]["subjects"] == 2
    last = json.loads(cli("builds", "last", "--json").out)
    assert last["id"] == second.build.id and last["name"] == "two"
    assert last["statement"]["_type"] == "https://in-toto.io/Statement/v1"
    assert [a["name"] for a in last["artifacts"]] == ["dist/app.bin", "dist/doc/readme"]
    assert json.loads(cli("builds", "show", "last", "--json").out) == last
    shown = json.loads(cli("builds", "show", first.build.id, "--json").out)
    assert shown["id"] == first.build.id
    prefix = json.loads(cli("builds", "show", first.build.id[:-4].lower(), "--json").out)
    assert prefix["id"] == first.build.id
    text = cli("builds", "show", first.build.id).out
    assert "dist/doc/readme" in text and "make dist" in text
    assert cli("builds", "show", "ZZZZ").code == 1


def test_ambiguous_build_prefix(cli, tmp_path):
    a = record_build(tmp_path / "ws", {"dist/a": b"a"}, run=facts())
    b = record_build(tmp_path / "ws", run=facts())
    common = os.path.commonprefix([a.build.id, b.build.id])
    result = cli("builds", "show", common)
    assert result.code == 2 and "ambiguous" in result.err
    assert a.build.id in result.err and b.build.id in result.err


def test_read_commands_never_create_or_write(cli, krate_home):
    for args in (
        ["artifacts", "list"],
        ["artifacts", "verify"],
        ["builds", "list", "--json"],
        ["artifacts", "show", "x"],
        ["provenance", "x"],
    ):
        cli(*args)
    assert not krate_home.exists()


def test_every_command_has_help_with_an_example():
    for args in (
        ["artifacts"],
        ["artifacts", "list"],
        ["artifacts", "show"],
        ["artifacts", "export"],
        ["artifacts", "verify"],
        ["builds"],
        ["builds", "list"],
        ["builds", "show"],
        ["builds", "last"],
        ["provenance"],
    ):
        out = run_krate(*args, "--help")
        assert out.returncode == 0, (args, out.stderr)
        assert "Example:" in out.stdout, args
