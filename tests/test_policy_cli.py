"""`krate policy ...` through the real entry point, the real store and the installed executable."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from krate.policy.builtin import PACKAGE_REGISTRIES
from tests.conftest import run_krate

WIDENING = '[network]\nallow = ["evil.example", "registry.npmjs.org"]\n'


@pytest.fixture
def project(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return ws


def events(cli, kind):
    return [e for e in json.loads(cli("audit", "list", "--json").out) if e["kind"] == kind]


def test_explain_json_shape_and_exit_zero_whatever_the_verdict(cli, project):
    allowed = cli("policy", "explain", "net", "registry.npmjs.org", "--json", "--no-resolve")
    assert allowed.code == 0
    assert json.loads(allowed.out) == {
        "verdict": "allow",
        "rule": "network.allow: registry.npmjs.org",
        "layer": "builtin:default",
        "subject": "registry.npmjs.org:443",
    }
    denied = cli("policy", "explain", "net", "github.com:22", "--json")
    assert denied.code == 0 and json.loads(denied.out)["verdict"] == "deny"
    ipv6 = json.loads(cli("policy", "explain", "net", "[::1]:5432", "--json").out)
    assert ipv6["subject"] == "[::1]:5432" and ipv6["verdict"] == "deny"

    env = json.loads(cli("policy", "explain", "env", "AWS_SECRET_ACCESS_KEY", "--json").out)
    assert env == {
        "verdict": "deny",
        "rule": "env.strip: AWS_*",
        "layer": "builtin:default",
        "subject": "AWS_SECRET_ACCESS_KEY",
    }
    read = json.loads(cli("policy", "explain", "read", "~/.ssh/id_ed25519", "--json").out)
    assert read["verdict"] == "deny" and read["subject"].endswith("/home/.ssh/id_ed25519")
    write = cli("policy", "explain", "write", ".git/hooks/pre-commit")
    assert write.code == 0 and write.out.startswith("deny\t")
    assert "filesystem.read_only: .git/hooks" in write.out

    strict = json.loads(
        cli("policy", "explain", "net", "pypi.org", "--policy", "strict", "--json").out
    )
    assert strict["verdict"] == "deny" and strict["layer"] == "flags"
    extra = json.loads(
        cli(
            "policy", "explain", "net", "x.example:8443", "--allow-host", "x.example:8443", "--json"
        ).out
    )
    assert extra["verdict"] == "allow" and extra["rule"] == "--allow-host x.example:8443"


def test_explain_usage_errors(cli, project):
    bad = cli("policy", "explain", "dns", "x")
    assert bad.code == 2 and "unknown kind 'dns'" in bad.err
    port = cli("policy", "explain", "net", "a.example:http")
    assert port.code == 2 and "not a port number" in port.err
    both = cli("policy", "explain", "net", "a.example", "--no-network", "--allow-host", "b.example")
    assert both.code == 2 and "--no-network and --allow-host" in both.err


def test_check_reports_file_line_and_exits_1(cli, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[network]\nallow = ["*.example.com", "example.com:8443"]\n')
    result = cli("policy", "check", str(good))
    assert result.code == 0 and result.out.strip() == f"{good}: ok"

    bad = tmp_path / "bad.toml"
    bad.write_text('[filesystem]\ndeny_read = ["~/.ssh"]\nalow_write = ["x"]\n')
    result = cli("policy", "check", str(bad))
    assert result.code == 1
    assert result.err == (
        f"{bad}:3: unknown key `filesystem.alow_write` (did you mean `allow_write`?)\n"
    )
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[network\n")
    result = cli("policy", "check", str(syntax))
    assert result.code == 1 and result.err.startswith(f"{syntax}:1: TOML syntax error")


def test_init_writes_a_valid_template_and_refuses_to_overwrite(cli, project):
    first = cli("policy", "init")
    assert first.code == 0 and (project / "krate.toml").exists()
    assert cli("policy", "check", "krate.toml").code == 0
    (project / "krate.toml").write_text("# mine\n")
    again = cli("policy", "init")
    assert again.code == 1 and "already exists" in again.err
    assert (project / "krate.toml").read_text() == "# mine\n"


def test_trust_lifecycle_events_and_index(cli, project, krate_home):
    toml = project / "krate.toml"
    toml.write_text(WIDENING)
    digest = hashlib.sha256(toml.read_bytes()).hexdigest()

    shown = json.loads(cli("policy", "show", "--json").out)
    assert any("`evil.example` ignored" in note for note in shown["ignored"])
    assert shown["layers"][1] == {
        "layer": "project",
        "source": str(toml),
        "trusted": False,
        "sha256": digest,
    }
    text = cli("policy", "show")
    assert "NOT trusted" in text.out and "ignored: " in text.out
    listed = {r["name"]: r for r in json.loads(cli("policy", "list", "--json").out)}
    assert listed["project"]["state"] == "untrusted"

    trusted = cli("policy", "trust")
    assert trusted.code == 0 and digest in trusted.err
    assert "now in effect" in trusted.err and "evil.example" in trusted.err
    (event,) = events(cli, "policy.trusted")
    assert event["data"] == {"path": str(toml), "sha256": digest}
    with sqlite3.connect(krate_home / "krate.db") as db:
        rows = db.execute("SELECT path, sha256, seq, trusted_at FROM policy_trust").fetchall()
    assert rows == [(str(toml), digest, event["seq"], event["ts"])]  # same transaction
    allowed = json.loads(cli("policy", "explain", "net", "evil.example", "--json").out)
    assert allowed["verdict"] == "allow" and allowed["layer"] == "project"
    assert json.loads(cli("policy", "show", "--json").out)["ignored"] == []
    assert {r["name"]: r for r in json.loads(cli("policy", "list", "--json").out)}["project"][
        "state"
    ] == "trusted"

    toml.write_text(WIDENING + "# edited\n")  # any edit revokes trust
    denied = json.loads(cli("policy", "explain", "net", "evil.example", "--json").out)
    assert denied["verdict"] == "deny"
    assert {r["name"]: r for r in json.loads(cli("policy", "list", "--json").out)}["project"][
        "state"
    ] == "edited since trusted"

    cli("policy", "trust", "krate.toml")  # naming the file trusts the same path
    assert len(events(cli, "policy.trusted")) == 2
    again = json.loads(cli("policy", "explain", "net", "evil.example", "--json").out)
    assert again["verdict"] == "allow"
    untrusted = cli("policy", "untrust")
    assert untrusted.code == 0
    (gone,) = events(cli, "policy.untrusted")
    assert gone["data"]["path"] == str(toml)
    with sqlite3.connect(krate_home / "krate.db") as db:
        assert db.execute("SELECT count(*) FROM policy_trust").fetchone() == (0,)
    again = cli("policy", "untrust")
    assert again.code == 1 and "is not trusted" in again.err
    assert cli("audit", "verify").code == 0


def test_trusting_an_invalid_file_is_refused_and_records_nothing(cli, project, krate_home):
    (project / "krate.toml").write_text('[network]\nallow = ["http://evil"]\n')
    result = cli("policy", "trust")
    assert result.code == 1 and f"{project / 'krate.toml'}:2:" in result.err
    assert not (krate_home / "krate.db").exists()
    nothing = cli("policy", "trust", "nope.toml")
    assert nothing.code == 1


def test_trust_without_a_project_file_says_what_to_do(cli, project):
    result = cli("policy", "trust")
    assert result.code == 1 and "no krate.toml" in result.err


def test_show_and_list_without_project(cli, project):
    data = json.loads(cli("policy", "show", "--json").out)
    assert data["name"] == "default"
    assert {r["pattern"] for r in data["network"]["allow"]} == set(PACKAGE_REGISTRIES)
    assert data["ignored"] == []
    assert set(data) >= {"hash", "workspace", "filesystem", "network", "env", "limits", "layers"}
    rows = json.loads(cli("policy", "list", "--json").out)
    assert [r["name"] for r in rows] == ["strict", "default", "open", "user", "project"]
    assert rows[-1]["state"] == "absent"


def test_invalid_project_file_stops_show_with_file_line(cli, project):
    (project / "krate.toml").write_text("[limits]\ncpu = 5\n")
    result = cli("policy", "show")
    assert result.code == 1
    assert result.err.startswith(f"krate: {project / 'krate.toml'}:2: unknown key `limits.cpu`")


def test_read_only_commands_never_create_the_store(cli, project, krate_home):
    (project / "krate.toml").write_text(WIDENING)
    for args in (
        ["policy", "list"],
        ["policy", "show"],
        ["policy", "show", "--json"],
        ["policy", "explain", "net", "a.example"],
        ["policy", "check", "krate.toml"],
    ):
        assert cli(*args).code == 0, args
    assert not krate_home.exists()


def test_user_policy_from_the_config_folder(cli, project, krate_home):
    krate_home.mkdir()
    (krate_home / "policy.toml").write_text('[network]\nadd = ["api.example.com"]\n')
    decision = json.loads(cli("policy", "explain", "net", "api.example.com", "--json").out)
    assert decision["layer"] == "user" and decision["verdict"] == "allow"
    hidden = json.loads(
        cli("policy", "explain", "read", str(krate_home / "krate.db"), "--json").out
    )
    assert hidden["verdict"] == "deny"


def test_installed_executable_check_and_explain(tmp_path, krate_home):
    bad = tmp_path / "krate.toml"
    bad.write_text('[network]\nallow = ["*.exa mple.com"]\n')
    done = run_krate("policy", "check", str(bad))
    assert done.returncode == 1
    assert done.stderr.startswith(f"{bad}:2: `network.allow`: invalid host pattern")
    explained = run_krate("policy", "explain", "net", "evil.example", "--json", cwd=tmp_path / "..")
    assert explained.returncode == 0 and json.loads(explained.stdout)["verdict"] == "deny"


def test_unreadable_trust_records_mean_untrusted_and_say_so(cli, project, krate_home):
    from krate.cli.policy_options import load_effective
    from krate.policy import Flags

    (project / "krate.toml").write_text(WIDENING)
    assert cli("policy", "trust").code == 0
    assert load_effective(Flags(), project).decide_net("evil.example", 443).verdict == "allow"
    with sqlite3.connect(krate_home / "krate.db") as db:  # looks like an older krate's schema
        db.execute("DELETE FROM _sqlite_migrations WHERE name = '0002_policy_trust'")
    policy = load_effective(Flags(), project)
    assert policy.decide_net("evil.example", 443).verdict == "deny"
    assert policy.ignored[0].startswith("trust records unreadable")
