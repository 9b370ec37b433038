"""Environment scrubbing: by the policy's name rules, and by values that look like credentials."""

from __future__ import annotations

from pathlib import Path

from krate.policy import Flags, effective_policy
from krate.sandbox.env import scrub

GHP = "ghp_" + "Z" * 36


def _policy(tmp_path: Path, flags: Flags | None = None):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return effective_policy(
        workspace=ws,
        home=tmp_path,
        user_policy_path=tmp_path / "none.toml",
        trusted={},
        flags=flags or Flags(),
    )


def _passed(policy):
    def passed(name):
        d = policy.decide_env(name)
        return d.verdict == "allow" and not d.rule.startswith("default")

    return passed


def test_strips_by_name_and_by_value_and_reports_names_only(tmp_path):
    policy = _policy(tmp_path)
    environ = {
        "PATH": "/usr/bin",
        "GITHUB_TOKEN": "abc",
        "AWS_SECRET_ACCESS_KEY": "wJalr",
        "INNOCENT": GHP,
        "DATABASE_URL": "postgres://u:pw@db/x",
        "TMPDIR": "/nonexistent",
        "TMP": "/elsewhere",
    }
    env, stripped = scrub(environ, policy.decide_env, _passed(policy), tmpdir="/tmp")
    names = {s.name for s in stripped}
    assert names == {"GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "INNOCENT", "DATABASE_URL"}
    assert env == {"PATH": "/usr/bin", "TMPDIR": "/tmp", "TMP": "/tmp"}
    by_name = {s.name: s for s in stripped}
    assert by_name["INNOCENT"].rule == "value looks like a github token"
    assert by_name["GITHUB_TOKEN"].rule.startswith("env.strip")
    for s in stripped:
        decision = s.to_decision()
        assert set(decision) == {"area", "verdict", "subject", "rule", "layer"}
        assert environ[s.name] not in str(decision)


def test_an_explicitly_passed_name_keeps_even_a_credential_value(tmp_path):
    policy = _policy(tmp_path, Flags(env=("GITHUB_TOKEN", "DEPLOY")))
    environ = {"GITHUB_TOKEN": GHP, "DEPLOY": GHP, "OTHER": GHP}
    env, stripped = scrub(environ, policy.decide_env, _passed(policy), tmpdir="/t")
    assert env["GITHUB_TOKEN"] == GHP and env["DEPLOY"] == GHP
    assert [s.name for s in stripped] == ["OTHER"]
