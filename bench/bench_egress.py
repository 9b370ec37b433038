"""Egress proxy cost, side by side in one run: throughput and added latency per connection.

Run: .venv/bin/python bench/bench_egress.py [--gib 1] [--connections 200]
Targets (issue 5): a 1 GiB download through the CONNECT tunnel at least 0.5 of a
direct loopback download; added latency per new connection (connect + first
byte) at most 5 ms median. The proxy is the real isolated helper process
(`python -I -S proxy.py`), listening on a loopback port (as on macOS); on Linux
the same download also runs from inside `krate run`, where the in-sandbox bridge
hands each connection to the proxy over its Unix socket.

`--one-cpu` pins the server, the proxy and curl to one CPU: the ratio then
compares the work per byte of the two paths. Without it, on a machine with
fewer than three CPUs, the tunnel's three busy processes (server, proxy, curl)
share two CPUs while the direct download's two have one each; a relay with no
logic at all measures about 0.4 there too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from krate.egress import Limits, start_for_run
from krate.paths import Paths
from krate.policy.decide import NetRule
from krate.policy.hosts import parse_pattern

MIB = 1024 * 1024


class Rules:
    """The network part of a policy: what start_for_run reads."""

    def __init__(self, *patterns: str) -> None:
        self.net_rules = tuple(
            NetRule(p, f"--allow-host {t}", "flags") for t in patterns for p in parse_pattern(t)
        )
        self.net_default = ("default: no rule allows it", "builtin:strict")


def serve_bytes(total: int) -> tuple[socket.socket, int]:
    """A loopback HTTP server answering every request with `total` bytes."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    block = b"x" * MIB

    def one(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n".encode()
            )
            left = total
            try:
                while left > 0:
                    n = min(left, len(block))
                    conn.sendall(block[:n])
                    left -= n
            except OSError:
                pass  # the latency probe hangs up after the first byte

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener, listener.getsockname()[1]


def curl_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", *args], check=True)
    return time.perf_counter() - start


def sandboxed_seconds(port: int, url: str, home: Path) -> float:
    """The same download from inside `krate run` (start-up included): the bridge hands
    curl's connection to the proxy, which relays it."""
    krate = Path(sys.executable).with_name("krate")
    # As root in root's own folder, krate runs the workload as root only when told to.
    as_root = ["--as-root"] if os.geteuid() == 0 else []
    argv = [str(krate), "run", *as_root, "--allow-host", f"127.0.0.1:{port}", "--",
            "curl", "-sS", "-p", "-x", "http://127.0.0.1:3128", "-o", "/dev/null", url]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=home, env=dict(os.environ, KRATE_HOME=str(home / "k")))
    return time.perf_counter() - start


def first_byte_ms(connect) -> float:
    """Open a connection, send a request, wait for the first response byte."""
    start = time.perf_counter()
    sock = connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.recv(1)
    elapsed = (time.perf_counter() - start) * 1000
    sock.close()
    return elapsed


def tunnel(proxy_port: int, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port))
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one-cpu", action="store_true", help="pin everything to one CPU")
    args = parser.parse_args()
    if args.one_cpu:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it
    print(f"CPUs used: {len(os.sched_getaffinity(0))}")
    total = int(args.gib * 1024 * MIB)
    listener, port = serve_bytes(total)
    small, small_port = serve_bytes(1)
    home = Path(tempfile.mkdtemp(prefix="krate-bench-"))
    session = start_for_run(
        Rules(f"127.0.0.1:{port}", f"127.0.0.1:{small_port}"),
        "bench",
        Paths(home, home),
        network="loopback",  # the loopback-port listener, so curl can reach it from here
    )
    # The same proxy with the portable relay (asyncio protocols), for comparison.
    portable = start_for_run(
        Rules(f"127.0.0.1:{port}"),
        "bench-portable",
        Paths(home, home),
        network="loopback",
        limits=Limits(threads=False),
    )
    proxy = session.tcp_port
    url = f"http://127.0.0.1:{port}/"
    try:
        rows = []
        for _ in range(args.repeat):  # interleaved, so a busy moment hits all three alike
            direct = curl_seconds([url])
            tunnelled = curl_seconds(["-p", "-x", f"http://127.0.0.1:{proxy}", url])
            other = curl_seconds(["-p", "-x", f"http://127.0.0.1:{portable.tcp_port}", url])
            rows.append((direct, tunnelled, other))
        direct = statistics.median(r[0] for r in rows)
        tunnelled = statistics.median(r[1] for r in rows)
        other = statistics.median(r[2] for r in rows)
        gib = total / (1024 * MIB)
        print(f"download {gib:g} GiB (curl, median of {args.repeat})")
        print(f"  direct loopback      {gib / direct * 1024:8.0f} MiB/s")
        print(f"  CONNECT tunnel       {gib / tunnelled * 1024:8.0f} MiB/s  (thread relay)")
        print(f"  CONNECT, portable    {gib / other * 1024:8.0f} MiB/s  (asyncio relay)")
        print(f"  ratio tunnel/direct  {direct / tunnelled:8.2f}   (target >= 0.5)")
        print(f"  ratio portable/direct{direct / other:8.2f}")
        if sys.platform.startswith("linux") and shutil.which("bwrap"):
            sandboxed = statistics.median(sandboxed_seconds(port, url, home) for _ in rows)
            rate, ratio = gib / sandboxed * 1024, direct / sandboxed
            print(f"  Linux sandbox path   {rate:8.0f} MiB/s  (bridge + proxy; ratio {ratio:.2f})")

        n = args.connections
        direct_ms, proxied_ms = [], []
        for _ in range(n):
            direct_ms.append(
                first_byte_ms(lambda: socket.create_connection(("127.0.0.1", small_port)))
            )
            proxied_ms.append(first_byte_ms(lambda: tunnel(proxy, small_port)))
        d, p = statistics.median(direct_ms), statistics.median(proxied_ms)
        print(f"\nnew connection, connect + first byte (median of {n})")
        print(f"  direct               {d:8.2f} ms")
        print(f"  CONNECT tunnel       {p:8.2f} ms")
        print(f"  added                {p - d:8.2f} ms   (target <= 5)")
    finally:
        summary = session.close()
        portable.close()
        listener.close()
        small.close()
        print(f"\nrecorded decisions: {summary.connections}")
        shutil.rmtree(home, ignore_errors=True)
        if os.environ.get("KRATE_BENCH_KEEP"):
            print(home, file=sys.stderr)


if __name__ == "__main__":
    main()
