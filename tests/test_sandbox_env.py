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


def test_path_pointers_are_not_secrets(tmp_path):
    """A CA bundle or a configuration file's path is kept; a secret-named one is not."""
    policy = _policy(tmp_path)
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-west-1\n")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {
        "AWS_CONFIG_FILE": str(config),  # AWS_* strips it by name, but it is a path
        "AWS_CA_BUNDLE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "SSL_CERT_FILE": str(bundle),
        "AWS_SHARED_CREDENTIALS_FILE": str(config),  # a credentials file: its name says so
        "DOCKER_AUTH_CONFIG": str(config),
        "AWS_SECRET_CONFIG": str(config),
        "AZURE_CONFIG": str(tmp_path / "missing"),  # no such file: not known to be a path
        "AWS_PROFILE_CONFIG": "inline-value",
    }
    env, stripped = scrub(environ, policy.decide_env, lambda name: False, tmpdir="/tmp")
    kept = set(env) - {"TMPDIR"}
    assert kept == {"AWS_CONFIG_FILE", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"}
    assert {s.name for s in stripped} == {
        "AWS_SHARED_CREDENTIALS_FILE",
        "DOCKER_AUTH_CONFIG",
        "AWS_SECRET_CONFIG",
        "AZURE_CONFIG",
        "AWS_PROFILE_CONFIG",
    }
    # A user's own strip rule still wins over the path exception.
    user = tmp_path / "user.toml"
    user.write_text('[env]\nstrip = ["AWS_CONFIG_FILE"]\n')
    mine = effective_policy(
        workspace=tmp_path / "ws", home=tmp_path, user_policy_path=user, trusted={}, flags=Flags()
    )
    env, _ = scrub(environ, mine.decide_env, lambda name: False, tmpdir="/tmp")
    assert "AWS_CONFIG_FILE" not in env


def test_the_real_run_keeps_path_pointers(box):
    config = box.home / "corp-aws-config"
    config.write_text("[default]\n")
    config.chmod(0o644)
    env = box.env(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(config))
    out = box.krate("run", "--no-network", "--", "python3", "-c", PRINT_ENV, env=env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["AWS_CONFIG_FILE"] == str(config)
    assert "AWS_SHARED_CREDENTIALS_FILE" not in seen
