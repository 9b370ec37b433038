"""`krate login` / `krate logout` against a real registry (htpasswd, bcrypt) on loopback.

The keychain is a real Secret Service: gnome-keyring on a private D-Bus session bus (the
`keychain` fixture, tests/secret_service.py), reached through krate's default backend.
Stored entries are read back from the service itself, not through krate.
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from tests.conftest import run_krate
from tests.registry_server import needs_registry
from tests.registry_support import USER, events

pytestmark = needs_registry


def test_login_with_the_right_password_keeps_it_in_the_keychain_only(
    registry, password, keychain, krate_home
):
    env = keychain.env()
    result = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password + "\n", env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"Logged in to {registry.name} as {USER}" in result.stderr
    # Plain HTTP was used because the registry is on loopback, and krate said so.
    assert "does not speak HTTPS; using plain HTTP" in result.stderr
    # The Secret Service itself holds it (read back with libsecret's secret-tool), and its
    # keyring file on disk keeps it encrypted.
    assert keychain.entries() == {registry.name: {"username": USER, "password": password}}
    assert json.loads(keychain.lookup("krate", registry.name))["password"] == password
    keyrings = list((keychain.dir / "data" / "keyrings").iterdir())
    assert keyrings and all(password.encode() not in p.read_bytes() for p in keyrings)
    stored = events(krate_home, "credential.")
    assert [e["kind"] for e in stored] == ["credential.stored"]
    assert stored[0]["registry"] == registry.name and stored[0]["user"] == USER
    assert stored[0]["account"] == registry.name and stored[0]["service"] == "krate"
    egress = events(krate_home, "network.egress")
    assert egress and {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}
    assert {e["command"] for e in egress} == {"krate login"}
    assert password not in result.stdout + result.stderr
    for path in krate_home.rglob("*"):  # the database, the config, everything krate wrote
        assert not path.is_file() or password.encode() not in path.read_bytes(), path


def test_login_with_a_wrong_password_stores_nothing(registry, password, keychain, krate_home):
    env = keychain.env()
    wrong = "wrong-" + secrets.token_hex(6)
    result = run_krate("login", registry.name, "-u", USER, "--password-stdin", input=wrong, env=env)
    assert result.returncode == 1
    assert f"{registry.name} refused the user name or password" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert keychain.entries() == {}
    assert events(krate_home, "credential.") == []
    # The connection it made to check them is still on the record.
    assert events(krate_home, "network.egress")


def test_logout_removes_the_entry(registry, password, keychain, krate_home):
    env = keychain.env()
    assert (
        run_krate(
            "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
        ).returncode
        == 0
    )
    out = run_krate("logout", registry.name, env=env)
    assert out.returncode == 0, out.stderr
    assert keychain.entries() == {}
    assert [e["kind"] for e in events(krate_home, "credential.")] == [
        "credential.stored",
        "credential.removed",
    ]
    again = run_krate("logout", registry.name, env=env)
    assert again.returncode == 1 and f"not logged in to {registry.name}" in again.stderr


def test_login_without_a_usable_keychain_says_what_to_install_and_writes_nothing(
    registry, password, krate_home
):
    pytest.importorskip("secretstorage")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env["XDG_RUNTIME_DIR"] = str(krate_home.parent / "no-runtime-dir")
    result = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
    )
    assert result.returncode == 1
    assert "no usable keychain" in result.stderr
    assert "Secret Service" in result.stderr and "Nothing was stored" in result.stderr
    assert password not in result.stderr
    assert not krate_home.exists(), "nothing may be written when there is no keychain"


def test_login_to_an_unreachable_registry_fails_clearly(keychain, krate_home, tmp_path):
    from tests.registry_server import free_port

    env = keychain.env()
    name = f"127.0.0.1:{free_port()}"
    result = run_krate("login", name, "-u", USER, "--password-stdin", input="x", env=env)
    assert result.returncode == 1
    assert f"registry {name} unreachable after" in result.stderr
    assert keychain.entries() == {}


def test_login_needs_a_terminal_or_password_stdin(registry, keychain):
    env = keychain.env()
    result = run_krate("login", registry.name, "-u", USER, input="", env=env)
    assert result.returncode == 2 and "--password-stdin" in result.stderr
    assert keychain.entries() == {}


def test_an_ordinary_user_logs_in_to_their_own_secret_service(
    registry, password, ordinary_user, user_tmp, keychain
):
    """Run as the unprivileged user against that user's own session bus and keyring."""
    if ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    from tests.secret_service import SecretService

    theirs = SecretService(ordinary_user).start()
    try:
        home = user_tmp / "krate-home"
        env = theirs.env(KRATE_HOME=str(home))
        login = run_krate(
            "login", registry.name, "-u", USER, "--password-stdin",
            input=password, env=env, user=ordinary_user,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        assert theirs.entries() == {registry.name: {"username": USER, "password": password}}
        assert keychain.entries() == {}, "root's keyring got the user's credentials"
        for path in home.rglob("*"):
            assert not path.is_file() or password.encode() not in path.read_bytes(), path
        out = run_krate("logout", registry.name, env=env, user=ordinary_user)
        assert out.returncode == 0, out.stderr
        assert theirs.entries() == {}
    finally:
        theirs.stop()


@pytest.mark.parametrize(
    "backend",
    ["keyrings.alt.file.PlaintextKeyring", "keyring.backends.null.Keyring"],
)
def test_plaintext_backends_stay_refused_even_beside_a_working_secret_service(
    registry, password, keychain, krate_home, tmp_path, backend
):
    env = keychain.env(PYTHON_KEYRING_BACKEND=backend, HOME=str(tmp_path / "home"))
    result = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
    )
    assert result.returncode == 1
    assert f"keyring backend {backend} does not keep secrets in an OS keychain" in result.stderr
    assert "Nothing was stored" in result.stderr and password not in result.stderr
    assert keychain.entries() == {}
    assert not krate_home.exists() and not (tmp_path / "home").exists()
