"""The egress proxy with real clients (curl, urllib, http.client, raw sockets) on loopback.

The proxy is always the real isolated helper process (`python -I -S proxy.py`)
started through `start_for_run`, here on a loopback TCP port (the macOS
listener) so host-side clients can reach it; the Unix-socket path through the
bridge is covered in test_egress_sandbox.py.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import krate.egress
from krate.egress import Limits, start_for_run
from krate.paths import Paths

from .egress_support import BWRAP, EchoCount, Server, all_event_text, decisions, policy

SECRET_PATH = "/private/some-secret-path"
SECRET_QUERY = "token=hunter2-in-the-query"


@pytest.fixture
def paths(krate_home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(krate_home)})


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def start(tmp_path, paths, *allow, run_id="run1", limits=None, python=None, profile="strict"):
    return start_for_run(
        policy(tmp_path, *allow, profile=profile),
        run_id,
        paths,
        network="loopback",
        limits=limits or Limits(),
        python=python,
    )


def auth(session) -> bytes:
    """The Proxy-Authorization line of this run's credential (the loopback listener's)."""
    token = base64.b64encode(f"krate:{session.secret}".encode())
    return b"Proxy-Authorization: Basic " + token + b"\r\n"


def socks_hello(session) -> bytes:
    """A SOCKS5 greeting offering username/password, and the RFC 1929 pair of this run."""
    secret = session.secret.encode()
    return b"\x05\x01\x02" + b"\x01\x05krate" + bytes([len(secret)]) + secret


SOCKS_AUTHED = b"\x05\x02\x01\x00"  # the proxy's answers to `socks_hello`


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def tunnel(session, target: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", session.tcp_port))
    sock.sendall(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + auth(session) + b"\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_real_clients_allowed_denied_and_recorded_without_paths(tmp_path, paths, server):
    session = start(tmp_path, paths, f"127.0.0.1:{server.port}")
    proxy = session.proxy_url()
    url = f"http://127.0.0.1:{server.port}{SECRET_PATH}?{SECRET_QUERY}"
    try:
        plain = curl("-x", proxy, url)
        assert plain.returncode == 0 and plain.stdout == f"hello from {server.port}\n"
        tunnelled = curl("-p", "-x", proxy, url)
        assert tunnelled.returncode == 0 and tunnelled.stdout == f"hello from {server.port}\n"

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
        with opener.open(url, timeout=20) as response:
            assert response.read() == f"hello from {server.port}\n".encode()

        conn = http.client.HTTPConnection("127.0.0.1", session.tcp_port, timeout=20)
        token = auth(session).decode().partition(": ")[2].strip()
        conn.set_tunnel("127.0.0.1", server.port, {"Proxy-Authorization": token})  # CONNECT
        conn.request("GET", f"{SECRET_PATH}?{SECRET_QUERY}")
        assert conn.getresponse().read() == f"hello from {server.port}\n".encode()
        conn.close()

        denied = curl("-x", proxy, "-w", "%{http_code}", f"http://denied.example{SECRET_PATH}")
        assert denied.stdout.endswith("403")
        assert "denied.example:80" in denied.stdout
        decided = policy(tmp_path, f"127.0.0.1:{server.port}").decide_net("denied.example", 80)
        assert f"rule: {decided.rule}, layer: {decided.layer}" in denied.stdout  # who decided
        assert (
            "krate run --allow-host denied.example --" in denied.stdout
        )  # the flag that would allow it
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open("http://denied.example:8080/x", timeout=20)
        assert refused.value.code == 403
        denied_tunnel = curl("-p", "-x", proxy, "http://denied.example:443/")
        assert denied_tunnel.returncode != 0
    finally:
        summary = session.close()

    rows = decisions(paths, "run1")
    assert summary.connections == len(rows) == 7
    assert [(r["protocol"], r["verdict"]) for r in rows] == [
        ("http", "allow"),
        ("connect", "allow"),
        ("http", "allow"),
        ("connect", "allow"),
        ("http", "deny"),
        ("http", "deny"),
        ("connect", "deny"),
    ]
    for row in rows[:4]:
        assert row["host"] == "127.0.0.1" and row["port"] == server.port
        assert row["rule"] == f"--allow-host 127.0.0.1:{server.port}" and row["layer"] == "flags"
        assert row["bytes_down"] > 0 and row["duration_ms"] >= 0
        assert row["address"] == "127.0.0.1"
    assert [(r["host"], r["port"]) for r in rows[4:]] == [
        ("denied.example", 80),
        ("denied.example", 8080),
        ("denied.example", 443),
    ]
    assert all(r["layer"] == "flags" and r["address"] is None for r in rows[4:])
    text = all_event_text(paths)
    for secret in ("some-secret-path", "hunter2", "private/", "User-Agent", "curl/"):
        assert secret not in text


def test_socks5_is_decided_the_same_way(tmp_path, paths, server):
    session = start(tmp_path, paths, f"localhost:{server.port}")
    socks, http = session.proxy_url("socks5h"), session.proxy_url()
    try:
        ok = curl("-x", socks, f"http://localhost:{server.port}/x")
        assert ok.returncode == 0 and ok.stdout == f"hello from {server.port}\n"
        by_ip = curl("-x", socks, f"http://127.0.0.1:{server.port}/")
        assert by_ip.returncode == 0
        other_port = curl("-x", socks, f"http://localhost:{server.port + 1}/")
        assert other_port.returncode == 97  # curl: SOCKS connection refused by the proxy
        denied = curl("-x", socks, "http://denied.example/")
        assert denied.returncode == 97
        # The HTTP proxy on the same listener gives the same answers.
        assert curl("-x", http, f"http://localhost:{server.port}/").returncode == 0
        assert "403" in curl("-x", http, "-w", "%{http_code}", "http://denied.example/").stdout
    finally:
        session.close()
    rows = decisions(paths, "run1")
    assert [(r["protocol"], r["host"], r["verdict"]) for r in rows] == [
        ("socks5", "localhost", "allow"),
        ("socks5", "127.0.0.1", "allow"),
        ("socks5", "localhost", "deny"),
        ("socks5", "denied.example", "deny"),
        ("http", "localhost", "allow"),
        ("http", "denied.example", "deny"),
    ]
    assert rows[0]["rule"] == rows[1]["rule"] == f"--allow-host localhost:{server.port}"


def test_socks_handshake_fuzzing_never_connects(tmp_path, paths, server):
    session = start(tmp_path, paths, "allowed.example")
    rng = random.Random(5)
    try:
        for i in range(200):
            payload = bytes([5]) + rng.randbytes(rng.randrange(1, 40))
            if i % 3 == 0:  # a valid greeting and credential, then a random request
                payload = socks_hello(session) + b"\x05" + rng.randbytes(rng.randrange(0, 30))
            with socket.create_connection(("127.0.0.1", session.tcp_port), timeout=5) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
            # After the method and credential answers no success reply (05 00 00) may follow.
            assert reply[2:5] != b"\x05\x00\x00", (payload, reply)
            assert reply[4:7] != b"\x05\x00\x00", (payload, reply)
    finally:
        session.close()
    assert all(r["verdict"] == "deny" for r in decisions(paths, "run1"))


def hosts_wrapper(tmp_path: Path, mapping: str) -> str:
    """A `python` for the proxy that sees its own /etc/hosts (bubblewrap, host network)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost\n{mapping}\n")
    script = tmp_path / "python-with-hosts"
    real = os.path.realpath(os.sys.executable)
    script.write_text(
        f'#!/bin/sh\nexec {BWRAP} --dev-bind / / --ro-bind {hosts} /etc/hosts {real} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(BWRAP is None, reason="needs bubblewrap to give the proxy its own /etc/hosts")
@pytest.mark.parametrize(
    ("extra", "allowed"),
    [((), False), (("localhost:{port}",), True), (("127.0.0.1:{port}",), True)],
)
def test_name_resolving_to_loopback_is_refused_unless_named(
    tmp_path, paths, server, extra, allowed
):
    python = hosts_wrapper(tmp_path, "127.0.0.1 app.example")
    rules = [f"app.example:{server.port}", *(e.format(port=server.port) for e in extra)]
    session = start(tmp_path, paths, *rules, python=python)
    try:
        result = curl(
            "-x", session.proxy_url(), "-w", "%{http_code}", f"http://app.example:{server.port}/"
        )
        socks = curl("-x", session.proxy_url("socks5h"), f"http://app.example:{server.port}/")
    finally:
        session.close()
    rows = decisions(paths, "run1")
    assert [r["host"] for r in rows] == ["app.example", "app.example"]
    if allowed:
        assert result.stdout == f"hello from {server.port}\n200"
        assert socks.returncode == 0
        assert all(r["verdict"] == "allow" and r["address"] == "127.0.0.1" for r in rows)
    else:
        assert result.stdout.endswith("403") and "127.0.0.1" in result.stdout
        assert socks.returncode == 97
        assert all(r["verdict"] == "deny" and r["address"] is None for r in rows)
        assert all("resolves to 127.0.0.1" in r["reason"] for r in rows)
        assert rows[0]["rule"] == f"--allow-host app.example:{server.port}"


def test_open_profile_still_refuses_loopback_private_and_metadata(tmp_path, paths, server):
    session = start(tmp_path, paths, profile="open")
    proxy = session.proxy_url()
    try:
        for target in (
            f"http://127.0.0.1:{server.port}/",
            f"http://localhost:{server.port}/",
            f"http://[::1]:{server.port}/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://[::ffff:127.0.0.1]:1/",
        ):
            assert curl("-x", proxy, "-w", "%{http_code}", target).stdout.endswith("403"), target
    finally:
        session.close()
    rows = decisions(paths, "run1")
    assert len(rows) == 6 and all(r["verdict"] == "deny" for r in rows)
    assert all(r["address"] is None for r in rows)
    assert rows[3]["host"] == "169.254.169.254"


def test_half_close_through_both_relays(tmp_path, paths):
    echo = EchoCount()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    for threads in (True, False):
        session = start(
            tmp_path,
            paths,
            f"127.0.0.1:{echo.port}",
            run_id=f"hc{int(threads)}",
            limits=Limits(threads=threads),
        )
        try:
            sock, head = tunnel(session, f"127.0.0.1:{echo.port}")
            assert head.startswith(b"HTTP/1.1 200")
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # our half is done; the answer must still arrive
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            sock.close()
            assert answer == f"got {len(payload)}".encode()
        finally:
            session.close()
        row = decisions(paths, f"hc{int(threads)}")[-1]
        assert row["bytes_up"] == len(payload) and row["bytes_down"] == len(answer)
    echo.close()


def test_bytes_sent_behind_a_request_reach_the_server_with_both_relays(tmp_path, paths):
    """What a client sends right behind its CONNECT or SOCKS request (read with the request)
    is handed to the relay, counted, and reaches the server."""
    echo = EchoCount()
    early = os.urandom(70_000)  # more than one read of the request
    socks_request = b"\x05\x01\x00\x01\x7f\x00\x00\x01" + echo.port.to_bytes(2, "big")
    for threads in (True, False):
        run_id = f"early{int(threads)}"
        rules = (f"127.0.0.1:{echo.port}",)
        session = start(tmp_path, paths, *rules, run_id=run_id, limits=Limits(threads=threads))
        try:
            for hello in (
                f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n".encode() + auth(session) + b"\r\n",
                socks_hello(session) + socks_request,
            ):
                with socket.create_connection(("127.0.0.1", session.tcp_port), timeout=10) as sock:
                    sock.sendall(hello + early)
                    sock.shutdown(socket.SHUT_WR)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                assert answer.endswith(f"got {len(early)}".encode())
        finally:
            session.close()
        rows = decisions(paths, run_id)  # in the order the connections ended
        assert sorted((r["protocol"], r["bytes_up"]) for r in rows) == [
            ("connect", len(early)),
            ("socks5", len(early)),
        ]
    echo.close()


def test_a_bad_socks_address_type_is_answered_at_once(tmp_path, paths):
    session = start(tmp_path, paths, "allowed.example")
    try:
        with socket.create_connection(("127.0.0.1", session.tcp_port), timeout=5) as sock:
            sock.sendall(socks_hello(session) + b"\x05\x01\x00\x02")  # address type 2: none
            reply = b""
            while len(reply) < 14:  # the client waits: no end of stream to go by
                reply += sock.recv(14)
        assert reply == SOCKS_AUTHED + bytes([5, 8, 0, 1, 0, 0, 0, 0, 0, 0])
    finally:
        session.close()
    assert decisions(paths, "run1")[0]["reason"] == "unsupported SOCKS address type"


def test_header_cap_idle_timeout_and_connection_cap(tmp_path, paths, server):
    limits = Limits(max_connections=2, idle_timeout=1.0, max_header_bytes=8192)
    session = start(tmp_path, paths, f"127.0.0.1:{server.port}", limits=limits)
    try:
        big = curl(
            "-x",
            session.proxy_url(),
            "-H",
            "X-Big: " + "a" * 10000,
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{server.port}/",
        )
        assert big.stdout.endswith("431")

        held = [tunnel(session, f"127.0.0.1:{server.port}") for _ in range(2)]
        assert all(head.startswith(b"HTTP/1.1 200") for _sock, head in held)
        third, head = tunnel(session, f"127.0.0.1:{server.port}")
        assert head.startswith(b"HTTP/1.1 503")
        third.close()
        start_idle = time.monotonic()
        for sock, _head in held:  # idle tunnels are closed by the proxy
            sock.settimeout(10)
            assert sock.recv(1) == b""
            sock.close()
        assert time.monotonic() - start_idle < 8
    finally:
        session.close()
    rows = decisions(paths, "run1")
    assert rows[0]["verdict"] == "deny" and "header over 8192 bytes" in rows[0]["reason"]
    capped = [r for r in rows if r["rule"] == "connection cap"]
    assert len(capped) == 1 and capped[0]["verdict"] == "deny"
    assert sum("idle for 1 s" in r["reason"] for r in rows) == 2


def test_connections_that_never_speak_cannot_make_threads_without_end(tmp_path, paths, server):
    """Each connection has a thread in the proxy from its first byte on: a workload
    opening connections and sending nothing (each would wait the 30 s header timeout)
    must not exhaust the user's process limit. Beyond 4x the cap they are closed unread,
    and recorded."""
    limits = Limits(max_connections=2)
    session = start(tmp_path, paths, f"127.0.0.1:{server.port}", limits=limits)
    socks = []
    try:
        session.require_ready()
        socks = [socket.create_connection(("127.0.0.1", session.tcp_port)) for _ in range(30)]
        time.sleep(1.0)
        status = Path(f"/proc/{session.process.pid}/status").read_text()
        threads = int(status.split("Threads:")[1].split()[0])
        assert threads <= 8 + 3, threads  # the connections' and main, accept, stdin
        closed = 0
        for sock in socks:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        assert closed >= 30 - 8
    finally:
        for sock in socks:
            sock.close()
        session.close()
    capped = [r for r in decisions(paths, "run1") if r["rule"] == "connection cap"]
    assert capped and "more than 8 connections open" in capped[0]["reason"]


def test_empty_allow_list_starts_no_proxy(tmp_path, paths):
    assert start_for_run(policy(tmp_path), "none", paths) is None
    assert not (paths.data_dir / "egress").exists()


def test_proxy_is_isolated_and_shuts_down_cleanly(tmp_path, paths, server):
    session = start(tmp_path, paths, f"127.0.0.1:{server.port}")
    cmdline = Path(f"/proc/{session.process.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-I", b"-S"]
    assert cmdline[3] == str(krate.egress.proxy_script()).encode()  # proxy.py or its bytecode
    environ = Path(f"/proc/{session.process.pid}/environ").read_bytes()
    assert b"KRATE_HOME" not in environ and b"HOME=" not in environ
    held, head = tunnel(session, f"127.0.0.1:{server.port}")
    assert head.startswith(b"HTTP/1.1 200")
    began = time.monotonic()
    summary = session.close()  # an open tunnel gets a short grace, then is cut
    assert time.monotonic() - began < 8
    assert session.process.returncode == 0
    assert summary.connections == 1 and len(decisions(paths, "run1")) == 1
    assert not session.folder.exists()
    assert not list((paths.data_dir / "egress").glob("*.jsonl"))
    held.settimeout(5)
    assert held.recv(1) == b""
    held.close()


# Its start-up is what a run's first connection waits for (issue 19): asyncio alone took
# about 30 ms of it, dataclasses and its inspect about 13 more.
SLOW_MODULES = ("asyncio", "concurrent", "dataclasses", "inspect", "subprocess", "ssl")


def test_the_proxy_never_imports_asyncio_or_other_slow_modules(tmp_path, paths, server):
    """The loaded modules it reports once it listens, after serving a connection; and no
    import of them anywhere in its own files, even inside a function."""
    import ast

    from krate.egress import helperlib

    session = start(tmp_path, paths, f"127.0.0.1:{server.port}")
    try:
        session.require_ready()
        held, head = tunnel(session, f"127.0.0.1:{server.port}")
        assert head.startswith(b"HTTP/1.1 200")
        held.close()
        files = session.recorder.ready_line["python"]["files"]
    finally:
        session.close()
    loaded = {Path(f).stem if Path(f).stem != "__init__" else Path(f).parent.name for f in files}
    assert "socket" in loaded and "json" in loaded  # the report does name the stdlib it uses
    assert not loaded & set(SLOW_MODULES), sorted(loaded & set(SLOW_MODULES))
    # typing (~2 ms) and pathlib (~0.6 ms) only for type checkers: under TYPE_CHECKING
    assert not loaded & {"typing", "pathlib"}, sorted(loaded & {"typing", "pathlib"})
    for rel in ("krate/egress/proxy.py", *helperlib.MODULES):
        tree = ast.parse((Path(helperlib.SRC) / rel).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            slow = [n for n in names if n.partition(".")[0] in SLOW_MODULES]
            assert not slow, f"{rel} imports {slow}"
