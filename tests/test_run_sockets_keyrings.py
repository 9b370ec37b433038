"""Agent sockets, kernel keyrings, vsock and terminal injection: what namespaces do not isolate.

Each test attacks from inside a real bubblewrap sandbox started by the installed `krate`,
as root and as the ordinary user `krate-test`, and checks that the attack failed and
that the run records what was hidden or refused.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from .conftest import KRATE
from .run_support import Box

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

# Probes a list of Unix socket paths; an ssh agent's answer to REQUEST_IDENTITIES is code 12.
PROBE_SOCKETS = textwrap.dedent(
    """
    import json, socket, sys
    out = {}
    for path in sys.argv[1:]:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(3)
            s.connect(path)
        except OSError as exc:
            out[path] = type(exc).__name__
            continue
        out[path] = "connected"
        try:
            s.sendall(b"\\0\\0\\0\\x01\\x0b")
            out[path] += " " + repr(s.recv(16)[:5])
        except OSError:
            pass
    print(json.dumps(out))
    """
)


def _as(box: Box) -> dict:
    if not box.user:
        return {}
    entry = pwd.getpwnam(box.user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown(box: Box, *paths: Path) -> None:
    if box.user:
        entry = pwd.getpwnam(box.user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)


class _Listener:
    """A plain listening Unix socket (a stand-in for Docker, a keyring daemon, ...)."""

    def __init__(self, path: Path, box: Box) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        os.chmod(path, 0o777)  # the ordinary user may connect from outside the sandbox
        self.server.listen()
        self.server.settimeout(0.2)
        self.accepted: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.accepted.append(1)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


def _start_agent(box: Box, path: Path) -> subprocess.Popen | None:
    exe = shutil.which("ssh-agent")
    if exe is None:
        return None
    agent = subprocess.Popen([exe, "-D", "-a", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **_as(box))  # fmt: skip
    end = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < end, "ssh-agent did not start"
        time.sleep(0.02)
    return agent


def test_sockets_named_by_stripped_variables_and_in_the_runtime_dir_are_not_connectable(box):
    sockets = box.base / "sockets"  # under /var/tmp: not covered by the private /tmp
    sockets.mkdir(mode=0o755)
    runtime = box.base / "xdg-runtime"  # an XDG_RUNTIME_DIR outside /run
    runtime.mkdir(mode=0o700)
    _chown(box, sockets, runtime)
    agent_path = sockets / "agent.sock"
    agent = _start_agent(box, agent_path)
    listeners = []
    if agent is None:  # no openssh-client here: a plain socket stands in for the agent
        listeners.append(_Listener(agent_path, box))
    docker = _Listener(sockets / "docker.sock", box)
    editor = _Listener(sockets / "editor.sock", box)  # named by a variable no list knows
    bus = _Listener(runtime / "bus", box)
    listeners += [docker, editor, bus]
    _chown(box, runtime / "bus")
    env = box.env(
        SSH_AUTH_SOCK=str(agent_path),
        DOCKER_HOST=f"unix://{sockets / 'docker.sock'}",
        MY_EDITOR_SERVER=str(sockets / "editor.sock"),
        XDG_RUNTIME_DIR=str(runtime),
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime / 'bus'},guid=0123",
        INNOCENT="plain-value-7f3e",
    )
    targets = [str(agent_path), str(sockets / "docker.sock"), str(sockets / "editor.sock"),
               str(runtime / "bus")]  # fmt: skip
    try:
        # From outside, as the same user, every socket answers: the test proves something.
        outside = subprocess.run(
            [sys.executable, "-c", PROBE_SOCKETS, *targets],
            capture_output=True, text=True, timeout=30, **_as(box),
        )  # fmt: skip
        assert all(v.startswith("connected") for v in json.loads(outside.stdout).values()), outside
        before = sum(len(x.accepted) for x in listeners)
        out = box.krate("run", "--no-network", "--", "python3", "-c", PROBE_SOCKETS, *targets,
                        env=env)  # fmt: skip
        assert out.returncode == 0, out
        inside = json.loads(out.stdout)
        assert not any(v.startswith("connected") for v in inside.values()), inside
        assert sum(len(x.accepted) for x in listeners) == before
    finally:
        for listener in listeners:
            listener.close()
        if agent is not None:
            agent.kill()
            agent.wait()
    run = box.last_run()
    hidden = run["layout"]["hidden"]
    for path in (agent_path, sockets / "docker.sock", sockets / "editor.sock", runtime):
        assert str(path) in hidden, hidden
    stripped = {d["subject"]: d["rule"] for d in run["decisions"] if d["area"] == "env"}
    assert {"SSH_AUTH_SOCK", "DOCKER_HOST", "MY_EDITOR_SERVER", "DBUS_SESSION_BUS_ADDRESS"} <= set(
        stripped
    ), stripped
    assert "socket" in stripped["MY_EDITOR_SERVER"]
    assert "INNOCENT" not in stripped
    raw = (box.krate_home / "krate.db").read_bytes()
    assert b"plain-value-7f3e" not in raw and b"guid=0123" not in raw


def test_an_explicitly_passed_socket_variable_keeps_its_socket(box):
    sockets = box.base / "sockets"
    sockets.mkdir(mode=0o755)
    _chown(box, sockets)
    server = _Listener(sockets / "wanted.sock", box)
    try:
        out = box.krate("run", "--no-network", "--env", "MY_SERVER", "--", "python3", "-c",
                        PROBE_SOCKETS, str(sockets / "wanted.sock"),
                        env=box.env(MY_SERVER=str(sockets / "wanted.sock")))  # fmt: skip
    finally:
        server.close()
    assert json.loads(out.stdout)[str(sockets / "wanted.sock")].startswith("connected"), out
    assert str(sockets / "wanted.sock") not in box.last_run()["layout"]["hidden"]


# A key in the caller's session keyring, then krate: as `keyctl add user ... @s` would leave it.
ADD_KEY_THEN_EXEC = textwrap.dedent(
    """
    import ctypes, os, platform, sys
    NR = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    assert libc.syscall(NR[1], 1, None) > 0, ctypes.get_errno()  # a session keyring of our own
    payload = b"KEYRING-SECRET-5d1c"
    key = libc.syscall(NR[0], b"user", b"krate-probe-key", payload, len(payload), ctypes.c_int(-3))
    assert key > 0, ctypes.get_errno()
    os.environ["PROBE_KEY_ID"] = str(key)
    os.execv(sys.argv[1], sys.argv[1:])
    """
)

PROBE_KEYS = textwrap.dedent(
    """
    import ctypes, errno, json, os, platform
    ADD, REQ, CTL = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(*args):
        r = libc.syscall(*args)
        return r if r >= 0 else errno.errorcode[ctypes.get_errno()]
    key = int(os.environ["PROBE_KEY_ID"])
    buf = ctypes.create_string_buffer(256)
    out = {
        "search": call(CTL, 10, ctypes.c_int(-3), b"user", b"krate-probe-key", 0),
        "read": call(CTL, 11, ctypes.c_long(key), buf, 256),
        "session": call(CTL, 0, ctypes.c_int(-3), 0),
        "request_key": call(REQ, b"user", b"krate-probe-key", None, 0),
        "add_key": call(ADD, b"user", b"x", b"y", 1, ctypes.c_int(-3)),
        "payload": buf.raw.rstrip(b"\\0").decode(errors="replace"),
    }
    try:
        out["proc_keys"] = open("/proc/keys").read()
    except OSError as exc:
        out["proc_keys"] = type(exc).__name__
    print(json.dumps(out))
    """
)


def test_the_callers_session_keyring_is_not_readable_inside(box):
    env = box.env(PROBE_KEY_ID="0")
    out = subprocess.run(
        ["python3", "-c", ADD_KEY_THEN_EXEC, KRATE, *box.args(("run",)), "--no-network", "--",
         "python3", "-c", PROBE_KEYS],
        env=env, cwd=box.ws, capture_output=True, text=True, timeout=60, **_as(box),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    assert "KEYRING-SECRET" not in out.stdout
    for call in ("search", "read", "session", "request_key", "add_key"):
        assert probe[call] == "EPERM", probe
    assert "krate-probe-key" not in probe["proc_keys"], probe
    kernel = box.last_run()["layout"]["kernel"]
    assert kernel["session_keyring"] == "new"
    assert {"keyctl", "add_key", "request_key"} <= set(kernel["seccomp"])
    assert {"/proc/keys", "/proc/key-users"} <= set(box.last_run()["layout"]["hidden"])


PROBE_FAMILIES = textwrap.dedent(
    """
    import ctypes, errno, json, os, platform, socket, subprocess
    out = {}
    for name, family in (("vsock", 40), ("bluetooth", 31), ("unix", 1), ("netlink", 16)):
        try:
            socket.socket(family, socket.SOCK_STREAM if family != 16 else socket.SOCK_RAW).close()
            out[name] = "created"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr_ioctl = {"x86_64": 16, "aarch64": 29}[platform.machine()]
    r, w = os.pipe()
    buf = ctypes.create_string_buffer(8)
    for name, request in (("tiocsti", 0x5412), ("tiocsti_high_bits", 0xFFFF_FFFF_0000_5412),
                          ("tioclinux", 0x541C), ("fionread", 0x541B)):
        rc = libc.syscall(nr_ioctl, r, ctypes.c_ulong(request), buf)
        out[name] = "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
    out["status"] = [l for l in open("/proc/self/status") if l.startswith("Seccomp")]
    out["git"] = subprocess.run(
        "mkdir g && cd g && git init -q && git -c user.name=t -c user.email=t@e "
        "commit -q --allow-empty -m x && git log --oneline | wc -l",
        shell=True, capture_output=True, text=True).stdout.strip()
    out["sh"] = subprocess.run(["sh", "-c", "echo $((6 * 7))"], capture_output=True,
                               text=True).stdout.strip()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("flags", [("--no-network",), ()], ids=["no-network", "egress-bridge"])
def test_vsock_bluetooth_and_terminal_injection_are_refused_ordinary_work_is_not(box, flags):
    out = box.krate("run", *flags, "--", "python3", "-c", PROBE_FAMILIES)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    assert probe["vsock"] in ("EACCES", "EPERM"), probe
    assert probe["bluetooth"] in ("EACCES", "EPERM"), probe
    assert probe["unix"] == "created" and probe["netlink"] == "created", probe
    assert probe["tiocsti"] == probe["tioclinux"] == "EPERM", probe
    assert probe["tiocsti_high_bits"] == "EPERM", probe  # the kernel reads 32 bits
    assert probe["fionread"] == "ok", probe  # other ioctls pass
    assert "Seccomp:\t2\n" in probe["status"], probe
    assert probe["git"] == "1" and probe["sh"] == "42", probe
    kernel = box.last_run()["layout"]["kernel"]
    assert {"socket(AF_VSOCK)", "ioctl(TIOCSTI)"} <= set(kernel["seccomp"]), kernel


def test_usual_agent_and_docker_sockets_are_hidden_without_any_variable(box):
    onepassword, docker = box.home / ".1password", box.home / ".docker" / "run"
    for folder in (onepassword, docker):
        folder.mkdir(parents=True)
        _chown(box, folder)
    _chown(box, docker.parent)
    servers = [_Listener(onepassword / "agent.sock", box), _Listener(docker / "docker.sock", box)]
    targets = [str(onepassword / "agent.sock"), str(docker / "docker.sock")]
    # SSH_AUTH_SOCK names a socket inside a hidden folder: hidden with it, and the run starts
    env = box.env(SSH_AUTH_SOCK=str(onepassword / "agent.sock"))
    try:
        out = box.krate("run", "--no-network", "--", "python3", "-c", PROBE_SOCKETS, *targets,
                        env=env)  # fmt: skip
    finally:
        for server in servers:
            server.close()
    assert out.returncode == 0, out.stderr
    assert not any(v.startswith("connected") for v in json.loads(out.stdout).values()), out.stdout
    assert not any(len(s.accepted) for s in servers)
    hidden = box.last_run()["layout"]["hidden"]
    assert str(onepassword) in hidden and str(docker) in hidden, hidden
