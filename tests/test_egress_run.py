"""Egress through the real `krate run`: allowed, denied, bypassed, recorded, and never lost."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from krate.errors import EXIT_KRATE_FAILED

from .egress_support import Server

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def code(url: str, *curl: str) -> str:
    return f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}\\n' {' '.join(curl)} {url}"


def test_run_reaches_allowed_hosts_only_and_show_lists_them(box, server):
    p = server.port
    script = "; ".join(
        [
            code(f"http://localhost:{p}/secret-path?q=1"),
            code(f"http://127.0.0.1:{p}/", "--noproxy '*'"),  # a client without proxy support
            code("http://example.com/"),
            code(f"http://127.0.0.1:{p + 1}/", "--noproxy '*'") + " || true",
            'test -z "$NO_PROXY" && echo "$HTTPS_PROXY $all_proxy"',
        ]
    )
    out = box.sh(script, "--policy", "strict", "--allow-host", f"localhost:{p}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:4] == ["200", "200", "403", "000"]
    assert lines[4].startswith("http://127.0.0.1:") and lines[5].startswith("socks5h://127.0.0.1:")
    shown = box.last_run()
    assert shown["hosts"] == [
        {"host": "localhost", "port": p, "verdict": "allow", "connections": 2,
         "bytes_up": shown["hosts"][0]["bytes_up"], "bytes_down": shown["hosts"][0]["bytes_down"]},
        {"host": "example.com", "port": 80, "verdict": "deny", "connections": 1,
         "bytes_up": 0, "bytes_down": 0},
    ]  # fmt: skip
    assert shown["hosts"][0]["bytes_down"] > 0 and shown["hosts"][0]["bytes_up"] > 0
    network = [d for d in shown["decisions"] if d.get("area") == "network"]
    assert [d["verdict"] for d in network] == ["allow", "allow", "deny"]
    assert "secret-path" not in str(network)  # (the argv itself is the run's own record)
    text = box.krate("runs", "show", "last")
    assert "example.com\t80\tdeny\t1\t0\t0" in text.stdout


def test_no_allow_list_means_no_proxy_and_no_way_out(box, server):
    out = box.sh(
        code(f"http://127.0.0.1:{server.port}/", "--noproxy '*'") + "; echo ${HTTP_PROXY:-none}",
        "--policy", "strict",
    )  # fmt: skip
    assert out.stdout.split() == ["000", "none"]
    assert not [d for d in box.last_run()["decisions"] if d.get("area") == "network"]


def test_a_killed_krate_loses_no_completed_connection(box, server):
    script = (
        f"for i in $(seq 25); do curl -sS -o /dev/null http://127.0.0.1:{server.port}/; done; "
        "echo done; sleep 60"
    )
    proc = box.popen(
        "run", "--policy", "strict", "--allow-host", f"127.0.0.1:{server.port}", "--",
        "/bin/sh", "-c", script, stdout=__import__("subprocess").PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "done"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = box.last_run()
    assert killed["status"] == "interrupted"
    # The next run records what the killed one had not (once its proxy has gone).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert box.sh("true", "--policy", "strict").returncode == 0
        shown = box.krate("runs", "show", killed["id"], "--json")
        if '"connections": 25' in shown.stdout:
            break
        time.sleep(0.5)
    import json

    data = json.loads(shown.stdout)
    assert data["hosts"] == [
        {"host": "127.0.0.1", "port": server.port, "verdict": "allow", "connections": 25,
         "bytes_up": data["hosts"][0]["bytes_up"], "bytes_down": data["hosts"][0]["bytes_down"]},
    ]  # fmt: skip
    ns = sorted(d["n"] for d in data["decisions"] if d.get("area") == "network")
    assert ns == list(range(1, 26))
    assert box.krate("audit", "verify").returncode == 0


@pytest.mark.parametrize("network", [True, False], ids=["bridge", "no-network"])
def test_a_run_that_cannot_be_recorded_never_runs(box, server, network):
    """With network, the sandbox starts while run.started is recorded and the bridge
    holds the workload until then: if the record fails, the workload must not run."""
    box.krate_home.mkdir(mode=0o700, exist_ok=True)
    (box.krate_home / "krate.db").write_bytes(b"this is not a database, " * 100)
    if box.user:
        from .run_support import chown_tree

        chown_tree(box.krate_home, box.user)
    flags = ["--allow-host", f"localhost:{server.port}"] if network else ["--no-network"]
    out = box.sh("touch ran; echo ran", *flags)
    assert out.returncode == EXIT_KRATE_FAILED  # krate failed before the workload (DESIGN.md)
    assert "corrupt or not a krate database" in out.stderr
    assert "ran" not in out.stdout and not (box.ws / "ran").exists()


FLOOD = """
import os, socket, sys
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
denied = 0
for target, times in ((b"denied.example:443", 1500), (b"denied.example:80", 400),
                      (b"other.example:443", 100)):
    for _ in range(times):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"CONNECT " + target + b" HTTP/1.1\\r\\nHost: " + target + b"\\r\\n\\r\\n")
            denied += b" 403 " in s.recv(200).split(b"\\r\\n")[0]
print(denied)
"""


def test_a_flood_of_denied_connections_is_coalesced_and_counted(box, server):
    """2,000 denied connections used to write 2,000 events: now one per host and port, and
    a count recorded when the run ends."""
    out = box.krate(
        "run", "--policy", "strict", "--allow-host", f"localhost:{server.port}", "--",
        "python3", "-c", FLOOD,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2000"]
    run = box.last_run()
    network = [d for d in run["decisions"] if d.get("area") == "network"]
    assert len(network) <= 6, len(network)  # the first of each, then one count each
    hosts = {(h["host"], h["port"]): h["connections"] for h in run["hosts"]}
    assert hosts == {
        ("denied.example", 443): 1500, ("denied.example", 80): 400, ("other.example", 443): 100
    }  # fmt: skip
    assert run["decision_counts"]["denied"] == 2000
    firsts = [d for d in network if "repeats" not in d]
    assert [(d["host"], d["port"], d["verdict"]) for d in firsts] == [
        ("denied.example", 443, "deny"), ("denied.example", 80, "deny"),
        ("other.example", 443, "deny"),
    ]  # fmt: skip
    counts = {(d["host"], d["port"]): d["repeats"] for d in network if "repeats" in d}
    assert counts == {
        ("denied.example", 443): 1499, ("denied.example", 80): 399, ("other.example", 443): 99
    }  # fmt: skip
    text = box.krate("runs", "show", "last").stdout
    assert "denied.example\t443\tdeny\t1500\t0\t0" in text
    assert "1499 more" in text
    listed = box.krate("runs", "list", "--json")
    assert json.loads(listed.stdout)[0]["decisions"]["denied"] == 2000
    assert box.krate("audit", "verify").returncode == 0


def test_a_run_refused_before_its_sandbox_leaves_no_proxy_behind(box, server):
    """The proxy starts before the run is prepared (its start-up overlaps that work): a run
    that ends before its sandbox (command not found, 127) stops it and leaves no socket
    folder and no journal behind."""
    tmp = box.base / "tmp"  # this run's own temporary folder: other runs' stay out of it
    tmp.mkdir()
    tmp.chmod(0o1777)
    out = box.krate("run", "--policy", "strict", "--allow-host", f"localhost:{server.port}",
                    "--", "no-such-command-krate-test", env=box.env(TMPDIR=str(tmp)))  # fmt: skip
    assert out.returncode == 127, out.stderr
    assert not list(tmp.iterdir())
    assert not list(box.krate_home.rglob("*.jsonl"))
    assert box.last_run()["status"] == "failed"
