"""The floor for bench_pull.py: the least a Python client must do to pull the same blobs.

Not product code. Fetches the named blobs from a registry with plain sockets (one
GET per blob, Basic auth sent up front, as curl does), `--conns` connections at once,
and writes each one to a file in `--out`; with `--hash` every byte goes through
hashlib.sha256 (checked against the digest at the end, as krate must), with
`--fsync` each file is fsynced before the next. `--pipe` splits each connection into
a thread that receives into a few 1 MiB buffers and a thread that hashes and writes
them (krate's transport_blobs.py does the same); without it one thread per connection
receives, hashes and writes in turn. No retries, no redirects, no progress, no record:
what is left is the unavoidable work (receive, hash, write, fsync) on this machine.

Run: python -I -S bench/pull_floor.py --port P --repo R --out DIR [--user U --password W]
     [--conns 3] [--hash] [--pipe] [--fsync] DIGEST...
Prints one JSON line: wall seconds of the transfer and CPU seconds of the process.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import queue
import socket
import threading
import time

BUFFER = 1 << 20
BUFFERS = 4


def request(sock: socket.socket, host: str, path: str, auth: str | None) -> tuple[bytes, int]:
    """Send one GET; the body bytes that came with the headers, and the Content-Length."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: floor"]
    if auth:
        lines.append(f"Authorization: {auth}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(65536)
        if not more:
            raise SystemExit("connection closed in the headers")
        head += more
    header, _, rest = head.partition(b"\r\n\r\n")
    status = header.split(b" ", 2)[1]
    if status != b"200":
        raise SystemExit(f"{path}: HTTP {status.decode()}")
    length = None
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise SystemExit("no Content-Length")
    return rest, length


def fill(sock: socket.socket, view: memoryview, want: int) -> int:
    """Receive until `want` bytes are in `view` (or the peer closes)."""
    got = 0
    while got < want:
        n = sock.recv_into(view[got:want])
        if not n:
            break
        got += n
    return got


def put(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def serial(sock, rest: bytes, left: int, fd: int, hasher) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    if rest:
        hasher and hasher.update(rest)
        put(fd, memoryview(rest))
        left -= len(rest)
    while left:
        n = fill(sock, view, min(BUFFER, left))
        if not n:
            raise SystemExit("short body")
        if hasher:
            hasher.update(view[:n])
        put(fd, view[:n])
        left -= n


def piped(sock, rest: bytes, left: int, fd: int, hasher) -> None:
    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(BUFFER))

    def writer() -> None:
        while (item := filled.get()) is not None:
            buf, n = item
            view = memoryview(buf)[:n]
            if hasher:
                hasher.update(view)
            put(fd, view)
            free.put(buf)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        if rest:
            filled.put((bytearray(rest), len(rest)))
            left -= len(rest)
        while left:
            buf = free.get()
            n = fill(sock, memoryview(buf), min(BUFFER, left))
            if not n:
                raise SystemExit("short body")
            filled.put((buf, n))
            left -= n
    finally:
        filled.put(None)
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--conns", type=int, default=3)
    parser.add_argument("--hash", action="store_true")
    parser.add_argument("--pipe", action="store_true")
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("digests", nargs="+")
    args = parser.parse_args()
    auth = None
    if args.user:
        auth = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    host = f"{args.host}:{args.port}"
    todo = list(reversed(args.digests))
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = time.perf_counter()
    cpu = time.process_time()

    def work() -> None:
        try:
            with socket.create_connection((args.host, args.port)) as sock:
                while True:
                    with lock:
                        if not todo:
                            return
                        digest = todo.pop()
                    rest, length = request(sock, host, f"/v2/{args.repo}/blobs/{digest}", auth)
                    hasher = hashlib.sha256() if args.hash else None
                    name = os.path.join(args.out, digest[7:])
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)
                    try:
                        (piped if args.pipe else serial)(sock, rest, length, fd, hasher)
                        if args.fsync:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                    if hasher and "sha256:" + hasher.hexdigest() != digest:
                        raise SystemExit(f"{digest}: digest mismatch")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(min(args.conns, len(todo)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
