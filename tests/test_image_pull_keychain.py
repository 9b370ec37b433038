"""`krate image pull` reads the keychain only when the registry asks for a login.

The job goes to the transport without credentials; the transport asks krate for them
at the registry's first 401 challenge (transport_auth.Asker). So an anonymous registry
never makes krate load keyring (nor start a Secret Service's D-Bus work), and an
authenticated one gets them once, while the transport is already connected. Real
registry (Debian's docker-registry), real `krate` subprocess, and a keyring backend
that notes every load and read (tests/keyring_probe.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_krate
from tests.registry_images import Pusher, image, layer
from tests.registry_server import Registry, needs_registry
from tests.registry_support import USER, events

pytestmark = needs_registry
TESTS = Path(__file__).resolve().parent


def probe_env(home: Path, mark: Path, **extra: str) -> dict:
    return {
        "PATH": os.environ["PATH"],
        "KRATE_HOME": str(home),
        "PYTHONPATH": str(TESTS),
        "PYTHON_KEYRING_BACKEND": "keyring_probe.Keyring",
        "KRATE_TEST_KEYRING_MARK": str(mark),
        **extra,
    }


def marks(mark: Path) -> list[str]:
    return mark.read_text().splitlines() if mark.exists() else []


def test_an_anonymous_pull_never_loads_the_keychain(tmp_path):
    reg = Registry(tmp_path / "open-registry").start()  # no auth: public images
    try:
        img = image([layer({"bin/tool": os.urandom(50_000)})])
        Pusher(reg.port).image("public/tool", "1", img)
        mark = tmp_path / "keychain-events"
        env = probe_env(tmp_path / "home", mark)
        result = run_krate("image", "pull", "-q", f"{reg.name}/public/tool:1", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == img.config_digest
        assert marks(mark) == []  # keyring's backend was never even imported
    finally:
        reg.kill()


def test_an_authenticated_pull_reads_the_keychain_once_when_challenged(
    registry, password, tmp_path
):
    img = image([layer({"a": os.urandom(2 << 20)}), layer({"b": os.urandom(2 << 20)})])
    Pusher(registry.port, USER, password).image("me/private", "1", img)
    mark = tmp_path / "keychain-events"
    home = tmp_path / "home"
    secret = json.dumps({"username": USER, "password": password})
    env = probe_env(home, mark, KRATE_TEST_KEYRING_SECRET=secret)
    result = run_krate("image", "pull", "--json", f"{registry.name}/me/private:1", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["image"] == img.config_digest
    assert marks(mark) == ["loaded", f"get {registry.name}"]
    assert password not in result.stdout + result.stderr
    egress = events(home, "network.egress")
    assert egress and {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}


def test_no_credentials_or_a_keychain_error_when_asked_is_one_line(registry, password, tmp_path):
    Pusher(registry.port, USER, password).image("me/private", "1", image([layer({"a": b"x"})]))
    ref = f"{registry.name}/me/private:1"
    mark = tmp_path / "keychain-events"
    none = run_krate("image", "pull", ref, env=probe_env(tmp_path / "home", mark))
    assert none.returncode == 1
    assert f"requires a login: run `krate login {registry.name}`" in none.stderr
    assert marks(mark) == ["loaded", f"get {registry.name}"]
    mark.unlink()
    env = probe_env(tmp_path / "home", mark, KRATE_TEST_KEYRING_FAIL="1")
    failed = run_krate("image", "pull", ref, env=env)
    assert failed.returncode == 1
    lines = [line for line in failed.stderr.splitlines() if "plain HTTP" not in line]
    assert len(lines) == 1 and lines[0].startswith("krate: cannot read the credentials"), lines
    assert "Traceback" not in failed.stderr
    assert marks(mark) == ["loaded", f"get {registry.name}"]
    assert not (tmp_path / "home" / "artifacts" / "sha256").is_dir() or not any(
        (tmp_path / "home" / "artifacts" / "sha256").iterdir()
    )


def ask_transport(registry, blob_dir: Path, answer: dict) -> tuple[int, list[dict]]:
    """The transport as krate starts it, with a pull job that asks for its credentials."""
    from krate.registry import client

    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(client.TRANSPORT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={},
    )  # fmt: skip
    job = {
        "op": "pull", "registry": registry.name, "scheme": "https", "http_fallback": True,
        "repository": "me/layers", "reference": "1", "zstd": False, "blob_dir": str(blob_dir),
        "platform": {"os": "linux", "architecture": "amd64", "variant": None},
        "credentials": "ask",
    }  # fmt: skip
    proc.stdin.write(json.dumps(job).encode() + b"\n")
    proc.stdin.flush()
    lines = []
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1]["type"] == "credentials":
            proc.stdin.write(json.dumps(answer).encode() + b"\n")
            proc.stdin.close()
    return proc.wait(timeout=60), lines


def test_the_transport_asks_once_after_connecting_and_only_then(registry, password, tmp_path):
    layers = [layer({f"f{i}": os.urandom(1 << 20)}, level=0) for i in range(3)]
    Pusher(registry.port, USER, password).image("me/layers", "1", image(layers))
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    code, lines = ask_transport(registry, blob_dir, {"username": USER, "password": password})
    kinds = [line["type"] for line in lines]
    assert code == 0 and kinds[-1] == "done", lines
    assert kinds.count("credentials") == 1  # three download threads, one question
    assert kinds.index("egress") < kinds.index("credentials")  # connected before asking
    assert password not in json.dumps(lines)
    refused, lines = ask_transport(registry, tmp_path / "none", {})  # no login: none given
    assert refused == 1 and lines[-1]["code"] == "unauthorized", lines
    assert "requires a login" in lines[-1]["message"]


def test_after_a_login_the_backend_is_loaded_early_but_read_only_when_asked(tmp_path):
    """A login on record (credential.stored, names only) lets the pull import keyring's
    backend in a thread while the transport connects; it is read only on a challenge, and
    a logout on record (credential.removed) stops even the import."""
    from krate.cli import image_pull_run
    from krate.paths import Paths
    from krate.store import events as chain
    from krate.store import open_store

    reg = Registry(tmp_path / "open-registry").start()  # anonymous: it never asks
    try:
        img = image([layer({"bin/tool": os.urandom(50_000)})])
        Pusher(reg.port).image("public/tool", "1", img)
        home = tmp_path / "home"
        ref = f"{reg.name}/public/tool:1"
        for kind, want in (
            ("credential.stored", ["loaded"]),
            ("credential.removed", []),
        ):
            with open_store(Paths.from_env({"KRATE_HOME": str(home)})) as store:
                chain.append(store, kind, {"registry": reg.name, "account": reg.name})
            mark = tmp_path / f"{kind}-marks"
            result = run_krate("image", "pull", "-q", ref, env=probe_env(home, mark))
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == img.config_digest
            # Never read: nobody asked. (The import may not finish before a pull this small
            # exits: the thread is a daemon, krate does not wait for it.)
            assert marks(mark) in ([], want), kind
            if kind == "credential.removed":
                assert marks(mark) == []
        with open_store(Paths.from_env({"KRATE_HOME": str(home)})) as store:
            chain.append(store, "credential.stored", {"registry": "other.example:5000"})
            assert not image_pull_run._logged_in(store, {reg.name})
            assert image_pull_run._logged_in(store, {"other.example:5000", reg.name})
    finally:
        reg.kill()
