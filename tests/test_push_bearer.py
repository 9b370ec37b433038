"""The Bearer token flow: a registry configured for token auth and a token server in the tests.

The token server (tests/registry_server.TokenServer) checks Basic credentials and
signs RS256 JWTs granting each user only their actions: `pusher` gets pull and
push, `reader` only pull. The keychain is a real Secret Service
(gnome-keyring on a private D-Bus bus: the `keychain` fixture).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_krate
from tests.registry_server import Reader, Registry, TokenServer, needs_registry
from tests.registry_support import events, make_artifact

pytestmark = needs_registry
USERS = {"pusher": ("push-pw-1", ["pull", "push"]), "reader": ("read-pw-2", ["pull"])}


@pytest.fixture
def token_registry(tmp_path):
    tokens = TokenServer(tmp_path / "tokens", USERS).start()
    reg = Registry(tmp_path / "registry", token=tokens).start()
    yield reg, tokens
    reg.kill()
    tokens.stop()


def login(reg, env, user, password):
    return run_krate("login", reg.name, "-u", user, "--password-stdin", input=password, env=env)


def test_push_with_a_push_scoped_token(tmp_path, token_registry, krate_home, keychain):
    reg, tokens = token_registry
    env = keychain.env()
    assert login(reg, env, "pusher", "push-pw-1").returncode == 0
    artifact, _ = make_artifact(tmp_path / "work")
    result = run_krate("push", "app.tar.gz", f"{reg.name}/team/app:1.0", env=env)
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    # krate asked for pull,push up front, with the user's Basic credentials.
    scopes = [r["scope"] for r in tokens.requests if r["user"] == "pusher"]
    assert ["repository:team/app:pull,push"] in scopes
    finished = events(krate_home, "push.finished")[0]
    assert finished["manifest"] == digest and finished["auth"] == "bearer"
    # The token service is a second destination the registry announced: it is on the record.
    egress = {(e["host"], e["port"]) for e in events(krate_home, "network.egress")}
    assert egress == {("127.0.0.1", reg.port), ("127.0.0.1", tokens.port)}
    token = tokens.sign(
        {
            "iss": tokens.issuer,
            "sub": "t",
            "aud": tokens.service,
            "exp": 2**31,
            "nbf": 0,
            "iat": 0,
            "jti": "x",
            "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
        }
    )
    reader = Reader(reg)
    reader.auth = "Bearer " + token
    manifest = json.loads(reader.manifest("team/app", "1.0")[0])
    assert manifest["layers"][0]["digest"] == artifact.digest


def test_a_pull_only_token_fails_with_a_clear_error(tmp_path, token_registry, krate_home, keychain):
    reg, _ = token_registry
    env = keychain.env()
    # Logging in works: the credentials are right, they just do not allow pushing.
    assert login(reg, env, "reader", "read-pw-2").returncode == 0
    make_artifact(tmp_path / "work")
    result = run_krate("push", "app.tar.gz", f"{reg.name}/team/app:1.0", env=env)
    assert result.returncode == 1
    assert "did not grant the access needed (repository:team/app:pull,push)" in result.stderr
    assert "for user reader" in result.stderr and "push permission" in result.stderr
    errors = [line for line in result.stderr.splitlines() if "plain HTTP" not in line]
    assert len(errors) == 1 and errors[0].startswith("krate: push to")  # one line
    failed = events(krate_home, "push.failed")
    assert len(failed) == 1 and failed[0]["error"] == "denied"
    assert events(krate_home, "push.finished") == []


def test_bearer_login_with_a_wrong_password_stores_nothing(token_registry, krate_home, keychain):
    reg, _ = token_registry
    result = login(reg, keychain.env(), "pusher", "not-it")
    assert result.returncode == 1
    assert "refused the user name or password for user pusher" in result.stderr
    assert keychain.entries() == {}
    assert events(krate_home, "credential.") == []
