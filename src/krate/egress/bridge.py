"""The in-sandbox bridge: the workload's only way to the egress proxy.

Why it exists: on Linux the sandbox has its own empty network namespace. This
program runs as the sandbox's first process (`python -I -S bridge.py ... -- CMD`),
listens on the sandbox's loopback (the HTTP proxy port, the SOCKS port, and each
allowed host-loopback port such as `localhost:5432`, at the same address), and
forwards every connection over the bind-mounted Unix socket to the proxy
outside, which decides and records it. Then it runs CMD, passes signals on,
and exits with CMD's status (128+N when CMD was killed by signal N).

Standard library only, threads rather than asyncio (it starts in a few
milliseconds). It decides nothing and records nothing: a forwarded loopback
port is sent to the proxy as `CONNECT host:port`, decided like any other.
It must never connect anywhere but the proxy's socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

CHUNK = 1024 * 1024
PROXY_WAIT_S = 10.0
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy one direction until EOF, then half-close the other side."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def dial(path: str, wait: float = PROXY_WAIT_S) -> socket.socket:
    """Connect to the proxy's socket, waiting while it starts (krate does not hold the
    workload back until the proxy is up: that would add its start-up to every run)."""
    deadline = time.monotonic() + wait
    while True:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
            return upstream
        except (FileNotFoundError, ConnectionRefusedError):
            upstream.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def connect_proxy(path: str, target: str | None) -> socket.socket | None:
    """A connection to the proxy; for a forwarded port, already tunnelled to `target`."""
    try:
        upstream = dial(path)
    except OSError:
        return None
    try:
        if target is None:
            return upstream
        upstream.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = upstream.recv(1)  # byte by byte: nothing past the head may be consumed
            if not chunk:
                break
            head += chunk
        if head.startswith(b"HTTP/1.1 200"):
            return upstream
    except OSError:
        pass
    upstream.close()
    return None


def serve(listener: socket.socket, path: str, target: str | None) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(client, path, target), daemon=True).start()


def handle(client: socket.socket, path: str, target: str | None) -> None:
    upstream = connect_proxy(path, target)
    if upstream is None:
        client.close()
        return
    back = threading.Thread(target=relay, args=(upstream, client), daemon=True)
    back.start()
    relay(client, upstream)
    back.join()
    client.close()
    upstream.close()


def listen(host: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        return None
    return sock


def parse(argv: list[str]) -> tuple[str, int, int, list[str], list[str]]:
    if "--" not in argv:
        raise SystemExit(
            "bridge: usage: bridge.py --socket PATH --http P --socks P [--forward H:P]... -- CMD"
        )
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    path, http, socks, forwards = "", 0, 0, []
    for i in range(0, len(opts), 2):
        name, value = opts[i], opts[i + 1]
        if name == "--socket":
            path = value
        elif name == "--http":
            http = int(value)
        elif name == "--socks":
            socks = int(value)
        elif name == "--forward":
            forwards.append(value)
    return path, http, socks, forwards, command


def main(argv: list[str]) -> int:
    path, http, socks, forwards, command = parse(argv)
    if not command:
        raise SystemExit("bridge: no command given")
    threading.stack_size(256 * 1024)
    listeners: list[tuple[socket.socket, str | None]] = []
    for port in (http, socks):
        sock = listen("127.0.0.1", port)
        if sock is None:
            sys.stderr.write(f"krate: cannot listen on 127.0.0.1:{port} in the sandbox\n")
            return 125
        listeners.append((sock, None))
    for target in forwards:
        host, _, port = target.rpartition(":")
        addresses = ("127.0.0.1", "::1") if host == "localhost" else (host,)
        for address in addresses:
            sock = listen(address, int(port))
            if sock is not None:
                listeners.append((sock, target if host != "::1" else f"[::1]:{port}"))
    for sock, target in listeners:
        threading.Thread(target=serve, args=(sock, path, target), daemon=True).start()

    # Handlers first, so a signal that arrives while the workload starts is not lost
    # (it would otherwise kill the bridge); it is passed on once the workload exists.
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)
            return
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signum)

    for name in FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    try:
        # Its own process group: krate signals the sandbox's first process group (the
        # bridge), and the bridge passes each signal on exactly once to the workload's group.
        child = subprocess.Popen(command, process_group=0)
    except FileNotFoundError:
        sys.stderr.write(f"krate: {command[0]}: command not found\n")
        return 127
    except PermissionError:
        sys.stderr.write(f"krate: {command[0]}: cannot execute (permission denied)\n")
        return 126
    except OSError as exc:
        sys.stderr.write(f"krate: {command[0]}: cannot execute ({exc.strerror})\n")
        return 126

    for signum in pending:
        forward(signum, None)
    status = child.wait()
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
