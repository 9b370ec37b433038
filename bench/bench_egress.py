"""Egress proxy cost, side by side in one run: throughput and added latency per connection.

Run: .venv/bin/python bench/bench_egress.py [--gib 1] [--connections 200]
Targets (issue 5): a 1 GiB download through the CONNECT tunnel at least 0.5 of a
direct loopback download; added latency per new connection (connect + first
byte) at most 5 ms median. The proxy is the real isolated helper process
(`python -I -S proxy.py`), listening on a loopback port (as on macOS), once per
way its relay can run (`RELAYS`: two blocking threads, or one thread with a
selector), each measured tunnelled (CONNECT) and as plain HTTP; on Linux the same
download also runs from inside `krate run`, where the in-sandbox bridge hands
each connection to the proxy over its Unix socket.

`--one-cpu` pins the server, the proxy and curl to one CPU: the ratio then
compares the work per byte of the two paths. Without it, on a machine with
fewer than three CPUs, the tunnel's three busy processes (server, proxy, curl)
share two CPUs while the direct download's two have one each; a relay with no
logic at all measures about 0.4 there too.
"""

from __future__ import annotations

import argparse
import base64
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
from typing import Any

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


def tunnel(session, port: int) -> socket.socket:
    """A CONNECT tunnel through `session`'s proxy, with the run's credential (as curl sends it)."""
    sock = socket.create_connection(("127.0.0.1", session.tcp_port))
    token = base64.b64encode(f"krate:{session.secret}".encode()).decode()
    sock.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


RELAYS = {"threads": True, "selector": False}  # config.threads: the relay's two pumps


def cpu_seconds(pid: int) -> float:
    """CPU time a process used so far (Linux /proc; 0 elsewhere): its work, whatever the load."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pid: int | None, run) -> tuple[float, float]:
    """(wall seconds of `run()`, CPU seconds the proxy `pid` spent meanwhile)."""
    cpu = cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    run()
    return time.perf_counter() - start, (cpu_seconds(pid) - cpu if pid else 0.0)


def downloads(proxies: dict[str, tuple[Any, int]], url: str, repeat: int) -> dict:
    """Median (wall seconds, proxy CPU seconds) per download: direct, then through each
    proxy (session, pid) tunnelled (CONNECT) and as plain HTTP; interleaved, so a busy
    moment hits all alike."""
    runs: dict[str, list[tuple[float, float]]] = {"direct": []}
    for _ in range(repeat):
        runs["direct"].append(timed(None, lambda: curl_seconds([url])))
        for name, (session, pid) in proxies.items():
            proxy = session.proxy_url()  # with the run's credential, as the workload gets it
            for kind, extra in (("CONNECT", ["-p"]), ("plain HTTP", [])):
                took = timed(pid, lambda e=extra, p=proxy: curl_seconds([*e, "-x", p, url]))
                runs.setdefault(f"{name} {kind}", []).append(took)
    return {
        name: (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
        for name, times in runs.items()
    }


def latencies(proxies: dict[str, tuple[Any, int]], port: int, n: int) -> dict:
    """Median ms to connect and get the first byte, and the proxy's CPU ms per connection:
    direct and through each proxy."""
    runs: dict[str, list[float]] = {"direct": []}
    cpu = {name: cpu_seconds(pid) for name, (_port, pid) in proxies.items()}
    for _ in range(n):
        runs["direct"].append(first_byte_ms(lambda: socket.create_connection(("127.0.0.1", port))))
        for name, (proxy, _pid) in proxies.items():
            runs.setdefault(name, []).append(first_byte_ms(lambda p=proxy: tunnel(p, port)))
    return {
        name: (
            statistics.median(times),
            (cpu_seconds(proxies[name][1]) - cpu[name]) * 1000 / n if name in cpu else 0.0,
        )
        for name, times in runs.items()
    }


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
    sessions = {
        name: start_for_run(
            Rules(f"127.0.0.1:{port}", f"127.0.0.1:{small_port}"),
            f"bench-{name}",
            Paths(home, home),
            network="loopback",  # the loopback-port listener, so curl can reach it from here
            limits=Limits(threads=threads),
        )
        for name, threads in RELAYS.items()
    }
    proxies = {name: (s, s.process.pid) for name, s in sessions.items()}
    url = f"http://127.0.0.1:{port}/"
    try:
        seconds = downloads(proxies, url, args.repeat)
        gib = total / (1024 * MIB)
        print(f"download {gib:g} GiB (curl, median of {args.repeat}): ratio to direct, proxy CPU")
        direct = seconds["direct"][0]
        for name, (took, cpu) in seconds.items():
            work = f"  {cpu / gib:5.2f} CPU s/GiB" if name != "direct" else ""
            print(f"  {name:<22}{gib / took * 1024:8.0f} MiB/s  {direct / took:6.2f}{work}")
        print("  (target: CONNECT ratio >= 0.5)")
        if sys.platform.startswith("linux") and shutil.which("bwrap"):
            sandboxed = statistics.median(
                sandboxed_seconds(port, url, home) for _ in range(args.repeat)
            )
            rate, ratio = gib / sandboxed * 1024, direct / sandboxed
            print(f"  Linux sandbox path    {rate:8.0f} MiB/s  {ratio:6.2f}  (bridge + proxy)")

        ms = latencies(proxies, small_port, args.connections)
        print(f"\nnew connection, connect + first byte (median of {args.connections}), proxy CPU")
        for name, (took, cpu) in ms.items():
            added = f"  added {took - ms['direct'][0]:.2f} ms, {cpu:.2f} CPU ms" if cpu else ""
            print(f"  {name:<22}{took:8.2f} ms{added}")
        print("  (target: added <= 5 ms)")
    finally:
        counts = [session.close().connections for session in sessions.values()]
        listener.close()
        small.close()
        print(f"\nrecorded decisions: {sum(counts)}")
        shutil.rmtree(home, ignore_errors=True)
        if os.environ.get("KRATE_BENCH_KEEP"):
            print(home, file=sys.stderr)


if __name__ == "__main__":
    main()
