"""Environment scrubbing: by the policy's name rules, and by values that look like credentials.

The expected outcomes are written out literally: the unit tests hand `scrub` a
literal set of explicitly passed names, and the end-to-end test runs the real
`krate run` so that production's own "passed explicitly" rule is what is tested.
"""

from __future__ import annotations

import json
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
    env, stripped = scrub(environ, policy.decide_env, lambda name: False, tmpdir="/tmp")
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
    passed = {"GITHUB_TOKEN", "DEPLOY"}.__contains__
    env, stripped = scrub(environ, policy.decide_env, passed, tmpdir="/t")
    assert env == {"GITHUB_TOKEN": GHP, "DEPLOY": GHP, "TMPDIR": "/t"}
    assert [(s.name, s.rule, s.layer) for s in stripped] == [
        ("OTHER", "value looks like a github token", "builtin")
    ]


PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def test_the_real_run_keeps_only_what_the_user_passed(box):
    """`--env` keeps a credential value; a built-in keep (SSL_CERT_FILE) does not."""
    env = box.env(GITHUB_TOKEN=GHP, DEPLOY=GHP, OTHER=GHP, SSL_CERT_FILE=GHP, PLAIN="hello")
    out = box.krate(
        "run", "--no-network", "--env", "DEPLOY", "--", "python3", "-c", PRINT_ENV, env=env
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["DEPLOY"] == GHP and seen["PLAIN"] == "hello"
    assert not {"GITHUB_TOKEN", "OTHER", "SSL_CERT_FILE"} & set(seen), seen
    assert GHP not in json.dumps({k: v for k, v in seen.items() if k != "DEPLOY"})
    decisions = {d["subject"]: d["rule"] for d in box.last_run()["decisions"] if d["area"] == "env"}
    assert decisions["OTHER"] == "value looks like a github token"
    assert decisions["SSL_CERT_FILE"] == "value looks like a github token"
    assert decisions["GITHUB_TOKEN"].startswith("env.strip")
    assert "DEPLOY" not in decisions and "PLAIN" not in decisions
    assert GHP.encode() not in (box.krate_home / "krate.db").read_bytes()
