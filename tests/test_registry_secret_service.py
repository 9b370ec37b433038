"""Reading a login from the Secret Service without keyring (registry/secret_service.py).

An authenticated `krate image pull` or `krate push` needs one keychain read; keyring's
import alone cost more than the read. The read now goes straight through secretstorage
(what keyring's Secret Service backend uses) when keyring would read it the same way,
and through keyring otherwise. Real gnome-keyring on a private bus, real registry with
htpasswd auth, real `krate` subprocess; the fallbacks with a stand-in secretstorage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from krate.registry import keychain, secret_service
from tests.conftest import run_krate
from tests.registry_images import Pusher, image, layer
from tests.registry_server import needs_registry
from tests.registry_support import USER, events

SS = secret_service.SECRET_SERVICE


def _imported(stderr: str) -> set[str]:
    """Module names from `PYTHONPROFILEIMPORTTIME=1` lines."""
    return {
        line.rpartition("|")[2].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


@needs_registry
@pytest.mark.parametrize("who", ["root", "user"])
def test_an_authenticated_pull_reads_the_login_without_importing_keyring(
    registry, password, keychain, tmp_path, ordinary_user, user_tmp, who
):
    """As root and as an ordinary user with their own session bus and keyring."""
    if who == "user" and ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    from tests.secret_service import SecretService

    user = ordinary_user if who == "user" else None
    service = SecretService(user).start() if user else keychain
    img = image([layer({"a": os.urandom(1 << 20)})])
    Pusher(registry.port, USER, password).image("me/private", "1", img)
    home = (user_tmp if user else tmp_path) / "home"
    env = service.env(KRATE_HOME=str(home))
    try:
        login = run_krate(
            "login", registry.name, "-u", USER, "--password-stdin",
            input=password, env=env, user=user,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        pull = run_krate(
            "image", "pull", "-q", f"{registry.name}/me/private:1",
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, user=user,
        )  # fmt: skip
    finally:
        if user:
            service.stop()
    assert pull.returncode == 0, pull.stderr[-2000:]
    assert pull.stdout.strip() == img.config_digest  # the registry took the credentials
    modules = _imported(pull.stderr)
    assert any(m.startswith("secretstorage.") for m in modules)
    assert not {m for m in modules if m == "keyring" or m.startswith("keyring.")}
    assert password not in pull.stdout + pull.stderr
    egress = events(home, "network.egress")  # still recorded, to the registry only
    assert egress and {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}


_BOTH = """
import json, sys
from keyring.core import load_keyring
from krate.registry import secret_service
ring = load_keyring(secret_service.SECRET_SERVICE)
ring.set_password("krate", "reg.example:5000", sys.argv[1])
ring.set_password("other", "reg2.example", "not krate's")
out = {}
for account in ("reg.example:5000", "reg2.example", "absent.example"):
    direct = secret_service.lookup(secret_service.SECRET_SERVICE, "krate", account, {})
    out[account] = [ring.get_password("krate", account), direct]
print(json.dumps(out))
"""


def test_the_direct_read_finds_exactly_what_keyring_finds(keychain):
    secret = json.dumps({"username": "ünïcode", "password": 'pw "quoted" ✓'})
    done = subprocess.run(
        [sys.executable, "-c", _BOTH, secret], env=keychain.env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["reg.example:5000"] == [secret, secret]
    assert found["reg2.example"] == [None, None]  # another service's entry is not krate's
    assert found["absent.example"] == [None, None]


class _Item:
    def __init__(self, secret: bytes, locked: bool = False) -> None:
        self.secret, self.locked = secret, locked

    def is_locked(self) -> bool:
        return self.locked

    def get_secret(self) -> bytes:
        return self.secret

    def unlock(self) -> None:
        raise AssertionError("the direct read never prompts")


def _fake(monkeypatch, *, locked=False, items=(), fails=None) -> list:
    """A stand-in secretstorage; returns the queries it was asked."""
    asked: list = []

    class Bus:
        def close(self) -> None:
            asked.append("closed")

    class Collection:
        def __init__(self, bus) -> None:
            if fails is not None:
                raise fails

        def is_locked(self) -> bool:
            return locked

        def unlock(self) -> None:
            raise AssertionError("the direct read never prompts")

        def search_items(self, attributes):
            asked.append(attributes)
            return iter(items)

    module = types.SimpleNamespace(dbus_init=Bus, Collection=Collection)
    monkeypatch.setitem(sys.modules, "secretstorage", module)
    return asked


def test_the_direct_read_asks_keyrings_default_attributes(monkeypatch):
    asked = _fake(monkeypatch, items=[_Item(b'{"x": 1}'), _Item(b"second")])
    assert secret_service.lookup(SS, "krate", "r.example", {}) == '{"x": 1}'
    assert asked == [{"username": "r.example", "service": "krate"}, "closed"]
    _fake(monkeypatch)
    assert secret_service.lookup(SS, "krate", "r.example", {}) is None


@pytest.mark.parametrize(
    "case",
    ["locked collection", "locked item", "no default collection", "not utf-8", "property", "macOS"],
)
def test_anything_unusual_goes_through_keyring(monkeypatch, case):
    backend, environ = SS, {}
    if case == "locked collection":
        _fake(monkeypatch, locked=True, items=[_Item(b"s")])
    elif case == "locked item":
        _fake(monkeypatch, items=[_Item(b"s", locked=True)])
    elif case == "no default collection":
        _fake(monkeypatch, fails=RuntimeError("no such alias"))
    elif case == "not utf-8":
        _fake(monkeypatch, items=[_Item(b"\xff")])
    elif case == "property":
        _fake(monkeypatch, items=[_Item(b"s")])
        environ = {"KEYRING_PROPERTY_SCHEME": "KeePassXC"}
    else:
        _fake(monkeypatch, items=[_Item(b"s")])
        backend = "keyring.backends.macOS.Keyring"
    assert secret_service.lookup(backend, "krate", "r.example", environ) is secret_service.UNSURE


def test_an_unsure_read_is_keyrings_to_answer(monkeypatch):
    """What krate's pull and push call: keyring (and its errors) when the direct read is unsure."""
    from krate.cli import registry_session
    from krate.errors import KrateError

    _fake(monkeypatch, locked=True)
    opened: list[str] = []

    class Ring:
        def get(self, registry):
            return keychain.Credentials("u", f"from keyring for {registry}")

    def open_keychain(name):
        opened.append(name)
        return Ring()

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(keychain, "open_keychain", open_keychain)
    assert registry_session._credentials("r.example").password == "from keyring for r.example"
    assert opened == [SS]

    def no_keychain(name):
        raise KrateError("no usable keychain")

    monkeypatch.setattr(keychain, "open_keychain", no_keychain)
    assert registry_session._credentials("r.example") is None  # as before: anonymous

    _fake(monkeypatch, items=[_Item(b"not json")])
    with pytest.raises(KrateError, match="is not one krate wrote"):
        registry_session._credentials("r.example")


def test_warming_the_read_ahead_of_a_challenge_never_reaches_the_secret_service(tmp_path):
    """The pull's preload thread warms what the read needs (secretstorage, its cipher's first
    use) before the registry asks: a session bus listening here must see no connection."""
    import socket

    bus = tmp_path / "bus"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bus))
    listener.listen(1)
    listener.setblocking(False)
    code = (
        "import sys\n"
        "from krate.registry import secret_service\n"
        "secret_service.warm()\n"
        "print('secretstorage' in sys.modules, 'cryptography' in sys.modules)\n"
    )
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True"], done.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
