"""Unix sockets named by environment values: parsing, stripping, and what the spec hides."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from krate.runs import RunRequest, prepare
from krate.sandbox import backend, seccomp, sockets
from krate.sandbox import env as env_mod


def test_socket_addresses_in_values():
    c = sockets.candidates
    assert c("/run/user/1/ssh.sock") == ["/run/user/1/ssh.sock"]
    assert c("unix:///home/u/.colima/default/docker.sock") == [
        "/home/u/.colima/default/docker.sock"
    ]
    assert "/run/user/1/bus" in c("unix:path=/run/user/1/bus,guid=abc;unix:abstract=/x")
    assert "/home/u/.gnupg/S.gpg-agent" in c("/home/u/.gnupg/S.gpg-agent:123:1")
    assert "/tmp/tmux-1/default" in c("/tmp/tmux-1/default,4242,0")
    assert "/tmp/kitty" in c("unix:/tmp/kitty")
    for value in ("tcp://10.0.0.1:2375", "unix:abstract=/tmp/dbus-x", "ghp_x", "", "x" * 9000):
        assert c(value) == [], value


@pytest.fixture
def folder():
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="krate-sock-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_named_sockets_and_the_runtime_folder(folder):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "s.sock"))
    (folder / "file").write_text("x")
    (folder / "link").symlink_to(folder / "s.sock")
    try:
        assert sockets.named(f"unix://{folder}/s.sock") == [f"{folder}/s.sock"]
        assert sockets.named(f"{folder}/link") == [f"{folder}/link"]  # resolved by the spec
        assert sockets.named(f"{folder}/file") == [] and sockets.named(str(folder)) == []
    finally:
        server.close()
    runtime = folder / "rt"
    runtime.mkdir(mode=0o700)
    uid = os.geteuid()
    assert sockets.runtime_dir(str(runtime), "/elsewhere", uid) == str(runtime)
    assert sockets.runtime_dir(str(runtime), str(runtime / "ws"), uid) is None  # holds the ws
    assert sockets.runtime_dir(str(runtime), "/elsewhere", uid + 1) is None  # not the user's
    assert sockets.runtime_dir("/", "/elsewhere", uid) is None
    assert sockets.runtime_dir("relative", "/elsewhere", uid) is None
    runtime.chmod(0o755)
    assert sockets.runtime_dir(str(runtime), "/elsewhere", uid) is None  # not private


class _Decision:
    def __init__(self, verdict: str) -> None:
        self.verdict, self.rule, self.layer = verdict, "default", "builtin"


def test_a_value_naming_a_socket_is_stripped_unless_passed(folder):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "s.sock"))
    path = str(folder / "s.sock")
    environ = {"EDITOR_SOCK": path, "PLAIN": str(folder), "KEEP": "unix:" + path}
    try:
        kept, stripped = env_mod.scrub(
            environ, lambda n: _Decision("allow"), lambda n: n == "KEEP", tmpdir="/tmp",
            sockets=sockets.named,
        )  # fmt: skip
    finally:
        server.close()
    assert [(s.name, s.rule) for s in stripped] == [("EDITOR_SOCK", "value names a Unix socket")]
    assert kept["PLAIN"] == str(folder) and kept["KEEP"] == environ["KEEP"]


def test_prepare_hides_sockets_of_stripped_names_and_proc_key_lists_on_linux_only(folder):
    from krate.policy import Flags
    from krate.policy.layers import effective_policy

    ws = folder / "ws"
    ws.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "agent.sock"))
    try:
        policy = effective_policy(
            workspace=ws, home=folder / "home", user_policy_path=folder / "none.toml",
            trusted={}, flags=Flags(),
        )  # fmt: skip
        environ = {"SSH_AUTH_SOCK": str(folder / "agent.sock"), "PATH": "/usr/bin"}
        linux = prepare(
            policy, RunRequest(("true",), ws, ws, environ), backend.named("bubblewrap", "bwrap")
        )
        mac = prepare(
            policy,
            RunRequest(("true",), ws, ws, environ),
            backend.named("seatbelt", "sandbox-exec"),
        )
    finally:
        server.close()
    assert folder / "agent.sock" in linux.spec.hidden
    assert {Path("/proc/keys"), Path("/proc/key-users")} <= set(linux.spec.hidden)
    assert linux.kernel == {"seccomp": seccomp.describe(), "session_keyring": "new"}
    assert folder / "agent.sock" in mac.spec.hidden and Path("/proc/keys") not in mac.spec.hidden
    assert mac.kernel is None
