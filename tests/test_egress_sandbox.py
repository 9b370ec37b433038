"""The bridge inside a real bubblewrap sandbox: the proxy is the only way out, and it records.

The sandbox here uses the same isolation flags as the bubblewrap backend
(every namespace unshared, network included; private /tmp and /run); the
session's `bind_args`, `env` and `wrap_argv` are exactly what `krate run` adds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krate.egress import recover, start_for_run
from krate.paths import Paths

from .egress_support import BWRAP, Server, decisions, policy

pytestmark = pytest.mark.skipif(BWRAP is None, reason="needs bubblewrap")


@pytest.fixture
def paths(krate_home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(krate_home)})


def sandbox_argv(session, argv: list[str]) -> list[str]:
    return [
        BWRAP, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/tmp", "--tmpfs", "/run", *session.bind_args(), "--",
        *session.wrap_argv(argv),
    ]  # fmt: skip


def run_in_sandbox(session, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", **session.env()}
    return subprocess.run(
        sandbox_argv(session, ["sh", "-c", script]),
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def host_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            return probe.getsockname()[0]
        except OSError:
            return None


PY = os.path.realpath(sys.executable)
UNIX_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"CONNECT " + sys.argv[2].encode() + b" HTTP/1.1\\r\\n\\r\\n")
print(s.recv(200).split(b"\\r\\n")[0].decode())
"""


def test_only_the_proxy_leads_out_and_bypasses_fail(tmp_path, paths):
    allowed, other = Server(), Server(bind="0.0.0.0")
    session = start_for_run(policy(tmp_path, f"localhost:{allowed.port}"), "sbx", paths)
    addr = host_address()
    p, q = allowed.port, other.port
    script = f"""
    code() {{
        curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' "$@" 2>/dev/null; echo " $?"
    }}
    echo "proxy-name $(code http://localhost:{p}/)"
    echo "proxy-ip $(code http://127.0.0.1:{p}/)"
    echo "forward $(code --noproxy '*' http://127.0.0.1:{p}/)"
    echo "forward-name $(code --noproxy '*' http://localhost:{p}/)"
    echo "socks $(code --proxy "$ALL_PROXY" http://localhost:{p}/)"
    echo "proxy-denied $(code http://127.0.0.1:{q}/)"
    echo "direct-loopback $(code --noproxy '*' http://127.0.0.1:{q}/)"
    echo "direct-v6 $(code --noproxy '*' -g http://[::1]:{q}/)"
    echo "direct-hostip $(code --noproxy '*' http://{addr or "192.0.2.1"}:{q}/)"
    echo "direct-public $(code --noproxy '*' --connect-timeout 3 http://1.1.1.1/)"
    {PY} -I -S -c 'import socket; socket.getaddrinfo("example.com", 80)' 2>/dev/null
    echo "resolve $?"
    echo "unix-denied $({PY} -I -S -c '{UNIX_CONNECT}' {session.socket_path} example.com:443)"
    """
    try:
        result = run_in_sandbox(session, script)
    finally:
        summary = session.close()
        allowed.close()
        other.close()
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["proxy-name"] == "200 0"
    assert lines["proxy-ip"] == "200 0"
    assert lines["forward"] == "200 0"  # a host-loopback port appears at the same address
    assert lines["forward-name"] == "200 0"
    assert lines["socks"] == "200 0"
    assert lines["proxy-denied"] == "403 0"
    for bypass in ("direct-loopback", "direct-v6", "direct-hostip", "direct-public"):
        assert lines[bypass].startswith("000 "), (bypass, lines[bypass])
        assert lines[bypass] != "000 0"
    assert lines["resolve"] != "0"
    assert lines["unix-denied"] == "HTTP/1.1 403 Forbidden"
    rows = decisions(paths, "sbx")
    assert summary.connections == len(rows)
    seen = [(r["host"], r["port"], r["verdict"]) for r in rows]
    assert seen == [
        ("localhost", p, "allow"),
        ("127.0.0.1", p, "allow"),
        ("localhost", p, "allow"),  # forwarded: handed to the proxy, decided like any other
        ("localhost", p, "allow"),
        ("localhost", p, "allow"),
        ("127.0.0.1", q, "deny"),
        ("example.com", 443, "deny"),
    ]
    assert [r["protocol"] for r in rows] == [
        "http", "http", "forward", "forward", "socks5", "http", "connect"
    ]  # fmt: skip


FORGED_HANDOVERS = """
import array, os, socket, sys
path, allowed, denied = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def hand(head, fd):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    s.settimeout(10)
    try:
        return s.recv(100)  # the proxy closes a hand-over it refuses
    except OSError as exc:
        return type(exc).__name__.encode()

def tcp_pair():
    lis = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lis.getsockname())
    b, _ = lis.accept()
    return a, b

with open("/etc/hostname", "rb") as f:
    print("file", hand(b"\\0P\\n", f.fileno()))
x, y = socket.socketpair()
print("unix", hand(b"\\0F 127.0.0.1:%d\\n" % allowed, x.fileno()))
a, b = tcp_pair()
print("garbled", hand(b"\\0Z nonsense\\n", a.fileno()))
a, b = tcp_pair()
hand(b"\\0F 127.0.0.1:%d\\n" % denied, a.fileno())
a.close()
b.settimeout(10)
print("denied-forward", b.recv(100))
"""


def test_forged_hand_overs_are_closed_or_decided(tmp_path, paths):
    """Whatever a workload sends over the Unix socket, only a TCP socket is served, and a
    forwarded target is decided by the policy like any other connection."""
    allowed, other = Server(), Server()
    session = start_for_run(policy(tmp_path, f"localhost:{allowed.port}"), "forged", paths)
    session.require_ready()  # the script dials the socket at once (the bridge would wait)
    script = (
        f"{PY} -I -S -c '{FORGED_HANDOVERS}' {session.socket_path} {allowed.port} {other.port}"
        f"; curl -sS -o /dev/null -w 'after %{{http_code}}' http://localhost:{allowed.port}/"
    )
    try:
        result = run_in_sandbox(session, script)
    finally:
        session.close()
        allowed.close()
        other.close()
    out = result.stdout
    for kind in ("file", "unix", "garbled"):
        assert f"{kind} b''" in out, (kind, out, result.stderr)
    assert "denied-forward b''" in out
    assert out.strip().endswith("after 200")  # the proxy still serves everyone else
    rows = decisions(paths, "forged")
    assert [(r["host"], r["port"], r["verdict"], r["protocol"]) for r in rows] == [
        ("127.0.0.1", other.port, "deny", "forward"),
        ("localhost", allowed.port, "allow", "http"),
    ]


def test_200_connections_give_200_decisions(tmp_path, paths):
    server = Server()
    session = start_for_run(policy(tmp_path, f"127.0.0.1:{server.port}"), "many", paths)
    client = f"""
import os, urllib.request, socket
ok = 0
for i in range(100):
    with urllib.request.urlopen("http://127.0.0.1:{server.port}/n%d" % i, timeout=20) as r:
        ok += r.status == 200
for i in range(100):
    s = socket.create_connection(("127.0.0.1", {server.port}))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    ok += s.recv(12).startswith(b"HTTP/1.1 200")
    s.close()
print(ok)
"""
    try:
        result = run_in_sandbox(session, f"{PY} -I -S -c '{client}'")
    finally:
        summary = session.close()
        server.close()
    assert result.stdout.strip() == "200", result.stderr
    rows = decisions(paths, "many")
    assert len(rows) == 200 == summary.connections
    assert sorted(r["n"] for r in rows) == list(range(1, 201))
    assert all(r["verdict"] == "allow" and r["bytes_down"] > 0 for r in rows)


KILLED_RUN = """
import os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
sys.path.insert(0, {tests!r})
from krate.egress import start_for_run
from krate.paths import Paths
from tests.egress_support import policy
from tests.test_egress_sandbox import sandbox_argv
paths = Paths(Path({home!r}), Path({home!r}))
session = start_for_run(policy(Path({tmp!r}), "127.0.0.1:{port}"), "killed", paths)
script = "for i in $(seq 30); do curl -sS -o /dev/null http://127.0.0.1:{port}/; done; " \\
    "echo done; sleep 60"
env = {{"PATH": os.environ["PATH"], **session.env()}}
subprocess.run(sandbox_argv(session, ["sh", "-c", script]), env=env)
"""


def test_a_killed_run_loses_no_completed_connection(tmp_path, paths):
    server = Server()
    code = KILLED_RUN.format(
        tests=str(Path(__file__).parent.parent), home=str(paths.data_dir), tmp=str(tmp_path),
        port=server.port,
    )  # fmt: skip
    krate = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert krate.stdout.readline().strip() == "done"
        os.kill(krate.pid, signal.SIGKILL)  # krate dies; its sandbox and proxy follow
        krate.wait()
    finally:
        server.close()
    journal = paths.data_dir / "egress" / "killed.jsonl"
    deadline = time.monotonic() + 20
    recovered = 0
    while time.monotonic() < deadline:
        recovered += recover(paths)  # skips the journal while the proxy still holds it
        if not journal.exists():
            break
        time.sleep(0.2)
    rows = decisions(paths, "killed")
    assert len(rows) == 30 and recovered <= 30
    assert all(r["verdict"] == "allow" for r in rows)
    assert not list(Path("/tmp").glob(f"krate-egress-{krate.pid}-*"))  # the proxy cleaned up


def test_exit_status_and_signals_pass_through_the_bridge(tmp_path, paths):
    server = Server()
    session = start_for_run(policy(tmp_path, f"127.0.0.1:{server.port}"), "sig", paths)
    try:
        assert run_in_sandbox(session, "exit 7").returncode == 7
        # Python (the bridge) ignores SIGPIPE; the workload must get the default back, or
        # `yes | head -1` would end with "Broken pipe" errors instead of quietly.
        ignored = run_in_sandbox(session, "grep SigIgn /proc/self/status").stdout.split()[-1]
        assert int(ignored, 16) & (1 << (signal.SIGPIPE - 1)) == 0
        piped = run_in_sandbox(session, "yes | head -1")
        assert piped.stdout == "y\n" and piped.stderr == ""
        env = {"PATH": os.environ["PATH"], **session.env()}
        missing = subprocess.run(
            sandbox_argv(session, ["no-such-command-here"]), env=env, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert missing.returncode == 127 and "command not found" in missing.stderr
        assert run_in_sandbox(session, "kill -TERM $$").returncode == 128 + signal.SIGTERM
        marker = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"
        proc = subprocess.Popen(
            sandbox_argv(session, ["sh", "-c", marker]), env=env, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        status = json_child_pid(proc.pid)
        os.killpg(status, signal.SIGTERM)  # what krate's supervisor does
        out, _ = proc.communicate(timeout=20)
        assert out.strip() == "got-term" and proc.returncode == 3
    finally:
        session.close()
        server.close()


def json_child_pid(bwrap_pid: int) -> int:
    """The sandbox's first process (the bridge): bwrap's grandchild (bwrap -> init -> bridge)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if b"bridge.py" in cmd and _ancestor(ppid, bwrap_pid):
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("bridge process not found")


def _ancestor(pid: int, wanted: int) -> bool:
    for _ in range(5):
        if pid == wanted:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
    return False


def test_a_held_bridge_runs_the_workload_only_when_released(tmp_path, paths):
    """The run is recorded while the sandbox starts; the bridge holds the workload until then."""
    marker = tmp_path / "started"
    env = {"PATH": os.environ["PATH"]}
    results = []
    for go in (True, False):
        session = start_for_run(policy(tmp_path, "localhost:9"), f"held{int(go)}", paths)
        session.hold()
        argv = sandbox_argv(session, ["sh", "-c", f"touch {marker}; exit 5"])
        at = argv.index("--")  # after `--tmpfs /tmp`, which would hide it
        argv[at:at] = ["--bind", str(tmp_path), str(tmp_path)]
        try:
            proc = subprocess.Popen(argv, env=env, pass_fds=session.held_fds())
            for fd in session.held_fds():
                os.close(fd)
            json_child_pid(proc.pid)  # the sandbox is set up: its bridge is running
            time.sleep(1.0)  # the thing under test: a held bridge does nothing meanwhile
            assert proc.poll() is None and not marker.exists()  # set up, and waiting
            session.release(go=go)
            results.append((proc.wait(timeout=30), marker.exists()))
        finally:
            session.close()
        marker.unlink(missing_ok=True)
    assert results == [(5, True), (125, False)]


@pytest.mark.parametrize("network", [True, False], ids=["bridge", "no-network"])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "store-corrupt"])
def test_the_workload_cannot_act_before_run_started_is_committed(
    tmp_path, monkeypatch, network, recorded
):
    """The real launch sequence: real bubblewrap, the real egress gate, a real SQLite store.

    An observer around the real record step (step 3) gives a workload that was let
    go too early a second to act, and finds it has not; when the step returns,
    run.started is committed. When the store cannot record the run, the workload
    never runs and krate fails with 125.
    """
    from krate import runs
    from krate.cli.policy_load import flags_from, load_effective
    from krate.errors import KrateError

    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    marker = ws / "acted"
    paths = Paths(home, home)
    if not recorded:
        home.mkdir(mode=0o700)
        (home / "krate.db").write_bytes(b"this is not a database, " * 100)
    allow = ["localhost:9"] if network else None
    policy_ = load_effective(flags_from(None, allow, None, None, not network, None), ws)
    real_start = runs._RunRecord.start
    seen: list[tuple[str, bool]] = []

    def observed(record) -> None:
        if record.state == "new":
            deadline = time.monotonic() + 1.0  # a released workload acts well within this
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(("acted before the record", marker.exists()))
        real_start(record)
        if record.state == "started" and len(seen) == 1:
            committed = record.run_id in [r.id for r in runs.list_runs(paths)]
            seen.append(("run.started committed", committed))

    monkeypatch.setattr(runs._RunRecord, "start", observed)
    request = runs.RunRequest(
        ("sh", "-c", f"touch {marker}"), ws, ws, {"PATH": os.defpath}, as_root=True
    )
    if recorded:
        result = runs.execute(paths, policy_, request)
        assert result.exit_code == 0 and marker.exists()
        assert seen == [("acted before the record", False), ("run.started committed", True)]
    else:
        with pytest.raises(KrateError) as failed:
            runs.execute(paths, policy_, request)
        assert failed.value.exit_code == 125
        assert seen == [("acted before the record", False)] and not marker.exists()


def test_a_networked_run_recovers_killed_runs_journals_once(tmp_path, monkeypatch):
    """Journals of killed runs are recorded once per run, before the proxy starts."""
    import krate.egress
    from krate import runs
    from krate.cli.policy_load import flags_from, load_effective

    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    paths = Paths(home, home)
    calls = []
    real = krate.egress.recover
    monkeypatch.setattr(krate.egress, "recover", lambda p: calls.append(p) or real(p))
    policy_ = load_effective(flags_from(None, ["localhost:9"], None, None, False, None), ws)
    request = runs.RunRequest(("true",), ws, ws, {"PATH": os.defpath}, as_root=True)
    assert runs.execute(paths, policy_, request).exit_code == 0
    assert calls == [paths]
