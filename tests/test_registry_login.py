"""`krate login` / `krate logout` against a real registry (htpasswd, bcrypt) on loopback.

The keychain here is a FAKE standing in for the macOS Keychain (tests/fake_keychain.py,
selected with PYTHON_KEYRING_BACKEND): this Linux machine has no Secret Service.
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.conftest import run_krate
from tests.registry_server import needs_registry
from tests.registry_support import USER, events, keychain_entries, keychain_env

pytestmark = needs_registry


@pytest.fixture
def keychain_file(tmp_path):
    return tmp_path / "fake-macos-keychain.json"


def test_login_with_the_right_password_keeps_it_in_the_keychain_only(
    registry, password, keychain_file, krate_home
):
    env = keychain_env(keychain_file)
    result = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password + "\n", env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"Logged in to {registry.name} as {USER}" in result.stderr
    # Plain HTTP was used because the registry is on loopback, and krate said so.
    assert "does not speak HTTPS; using plain HTTP" in result.stderr
    assert keychain_entries(keychain_file) == {
        registry.name: {"username": USER, "password": password}
    }
    stored = events(krate_home, "credential.")
    assert [e["kind"] for e in stored] == ["credential.stored"]
    assert stored[0]["registry"] == registry.name and stored[0]["user"] == USER
    assert stored[0]["account"] == registry.name and stored[0]["service"] == "krate"
    egress = events(krate_home, "network.egress")
    assert egress and {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}
    assert {e["command"] for e in egress} == {"krate login"}
    assert password not in result.stdout + result.stderr
    assert password.encode() not in (krate_home / "krate.db").read_bytes()


def test_login_with_a_wrong_password_stores_nothing(registry, password, keychain_file, krate_home):
    env = keychain_env(keychain_file)
    wrong = "wrong-" + secrets.token_hex(6)
    result = run_krate("login", registry.name, "-u", USER, "--password-stdin", input=wrong, env=env)
    assert result.returncode == 1
    assert f"{registry.name} refused the user name or password" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert keychain_entries(keychain_file) == {}
    assert events(krate_home, "credential.") == []
    # The connection it made to check them is still on the record.
    assert events(krate_home, "network.egress")


def test_logout_removes_the_entry(registry, password, keychain_file, krate_home):
    env = keychain_env(keychain_file)
    assert (
        run_krate(
            "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
        ).returncode
        == 0
    )
    out = run_krate("logout", registry.name, env=env)
    assert out.returncode == 0, out.stderr
    assert keychain_entries(keychain_file) == {}
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


def test_login_to_an_unreachable_registry_fails_clearly(keychain_file, krate_home, tmp_path):
    from tests.registry_server import free_port

    env = keychain_env(keychain_file)
    name = f"127.0.0.1:{free_port()}"
    result = run_krate("login", name, "-u", USER, "--password-stdin", input="x", env=env)
    assert result.returncode == 1
    assert f"registry {name} unreachable after" in result.stderr
    assert keychain_entries(keychain_file) == {}


def test_login_needs_a_terminal_or_password_stdin(registry, keychain_file):
    env = keychain_env(keychain_file)
    result = run_krate("login", registry.name, "-u", USER, input="", env=env)
    assert result.returncode == 2 and "--password-stdin" in result.stderr
    assert keychain_entries(keychain_file) == {}
