"""One client of the egress proxy: read its request, dial, answer, relay, report.

HTTP CONNECT, plain HTTP with absolute URIs and SOCKS5 are told apart by the
first byte and parsed by `parsers` (pure); `Dialer.dial` decides and connects;
`Relay` moves the bytes. Each connection ends with one decision line (`Record`),
metadata only: never a URL path, query, header or body. On the loopback listener
(`Config.secret`) a client must first give this run's credential: the port is
reachable by every local process, the bridge's socket only by this run's sandbox.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from krate.egress import parsers
from krate.egress.dial import Dialer, Refused, Stopped, Upstream
from krate.egress.parsers import Refusal, Target
from krate.egress.relay import Relay
from krate.egress.wire import Config, Record
from krate.egress.workers import Workers

READ_CHUNK = 64 * 1024
# Connections open at once (each has its thread, even before its request is read), as a
# multiple of the connection cap: threads count against the user's process limit
# (RLIMIT_NPROC), so a workload opening connections without end must not exhaust it.
OPEN_PER_CAP = 4
STACK_SIZE = 512 * 1024  # a connection's thread needs little (Python frames are on the heap)


class Proxy:
    """Serves clients, each in a thread of its own; counts them, and ends them at shutdown."""

    def __init__(self, config: Config, dialer: Dialer, emit: Callable[[dict], None]) -> None:
        self.config, self.dialer, self.emit = config, dialer, emit
        self.count = 0
        self.active = 0  # clients being served (handle): the connection cap counts them
        self.threads = 0  # every connection's thread, hand-overs and name queries too
        self.lock = threading.Condition()  # guards the counts and `live`
        self.live: dict[int, list[socket.socket]] = {}  # per connection: its sockets
        self.stopping = dialer.stopping
        threading.stack_size(STACK_SIZE)
        self.workers = Workers()  # kept once started: see workers.py

    def start(self, serve: Callable, conn: socket.socket) -> None:
        """Serve `conn` with `serve(conn, None)` in a thread of its own (a kept one, or a new
        daemon thread); or, with too many open already, close it unread and record that."""
        limit = OPEN_PER_CAP * self.config.max_connections
        with self.lock:
            full = self.threads >= limit
            if not full:
                self.threads += 1
        if full:
            conn.close()
            record = Record(self.next_number(), reason=f"more than {limit} connections open")
            record.rule, record.layer = "connection cap", "proxy"
            self.emit(record.line())
            return
        try:
            self.workers.submit(lambda: serve(conn, None), self.done)
        except RuntimeError:  # no thread to be had: the client is dropped
            conn.close()
            self.done()

    def done(self) -> None:
        with self.lock:
            self.threads -= 1
            self.lock.notify_all()

    def next_number(self, active: int = 0) -> int:
        with self.lock:
            self.count += 1
            self.active += active
            return self.count

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is being served; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.threads:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
        return True

    def stop_all(self) -> None:
        """The shutdown: end every connection now (wakes a thread blocked on its sockets)."""
        self.stopping.set()
        with self.lock:
            socks = [s for group in self.live.values() for s in group]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def watch(self, *socks: socket.socket) -> None:
        """These sockets belong to the calling thread's connection (see stop_all)."""
        with self.lock:
            self.live.setdefault(threading.get_ident(), []).extend(socks)
        if self.stopping.is_set():
            raise Stopped()

    def handle(self, client: socket.socket, forward: tuple | None = None) -> None:
        """One client: HTTP, CONNECT or SOCKS5, or (`forward`) a raw stream to that target:
        (host, port) a forwarded loopback port, (host, port, "dns") a name the bridge's
        DNS answered."""
        record = Record(self.next_number(active=1))
        upstream = None
        try:
            client.setblocking(True)
            self.watch(client)
            if forward is not None:
                record.protocol = forward[2] if len(forward) > 2 else "forward"
                target: Target | Refusal = Target(record.protocol, *forward[:2], used=0)
                data = b""
            else:
                target, data = self.request(client, record)
            upstream = self.connect(client, target, record)
            if upstream is not None and isinstance(target, Target):
                self.relay(client, upstream, target, data, record)
        except Stopped:
            record.reason = record.reason or "proxy shut down"
        except TimeoutError:
            record.reason = record.reason or "client sent no complete request in time"
        except (ConnectionError, OSError) as exc:
            stopped = self.stopping.is_set()
            failed = f"client connection failed: {type(exc).__name__}"
            record.reason = record.reason or ("proxy shut down" if stopped else failed)
        finally:
            if self.stopping.is_set():
                record.reason = record.reason or "proxy shut down"
            with self.lock:
                self.live.pop(threading.get_ident(), None)
                self.active -= 1
            for sock in (client, upstream.sock if upstream else None):
                if sock is not None:
                    sock.close()
            self.emit(record.line())

    # -- the request

    def request(self, client: socket.socket, record: Record) -> tuple:
        """(Target or Refusal, every byte the client sent so far)."""
        secret = self.config.secret  # the loopback listener's per-run credential, or None
        data = self.read(client, b"", lambda d: 1)
        if not data:
            record.reason = "client closed before a request"
            return Refusal("empty", record.reason), data
        if data[0] != 5:
            record.protocol = "http"
            limit = self.config.max_header_bytes
            data = self.read(client, data, lambda d: parsers.http_head_size(d, limit))
            return parsers.http_request(data, limit, secret), data
        record.protocol = "socks5"
        data = self.read(client, data, parsers.socks_greeting_size)
        greeted = parsers.socks_greeting(data, userpass=secret is not None)
        if isinstance(greeted, Refusal):
            return greeted, data
        self.send(client, greeted.reply)
        data = data[greeted.used :]
        if secret is not None:  # RFC 1929: this run's user name and secret
            data = self.read(client, data, parsers.socks_auth_size)
            greeted = parsers.socks_auth(data, secret)
            if isinstance(greeted, Refusal):
                return greeted, data
            self.send(client, greeted.reply)
            data = data[greeted.used :]
        rest = self.read(client, data, parsers.socks_request_size)
        return parsers.socks_request(rest), rest

    def read(self, sock: socket.socket, data: bytes, size: Callable) -> bytes:
        """Read until `size(data)` bytes have come (None: until `size` says so), or EOF.

        `size` returning 0 means "too large already": stop reading.
        """
        deadline = time.monotonic() + self.config.header_timeout
        while True:
            want = size(data)
            if want == 0 or (want is not None and len(data) >= want):
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError()
            sock.settimeout(left)
            try:
                chunk = sock.recv(READ_CHUNK)
            finally:
                sock.settimeout(None)
            if not chunk:
                return data
            data += chunk

    def send(self, sock: socket.socket, data: bytes) -> None:
        """A short answer (a reply or refusal), bounded by the header timeout."""
        if data:
            sock.settimeout(self.config.header_timeout)
            try:
                with contextlib.suppress(ConnectionError):
                    sock.sendall(data)
            finally:
                sock.settimeout(None)

    # -- the connection

    def connect(
        self, client: socket.socket, target: Target | Refusal, record: Record
    ) -> Upstream | None:
        """Dial the target and tell the client; or tell it why not. None: nothing to relay."""
        if isinstance(target, Refusal):
            if target.kind == "unauthenticated":  # another local process, not this run
                record.rule, record.layer = "proxy credential", "proxy"
            record.reason = record.reason or target.reason
            record.protocol = target.protocol or record.protocol
            if target.host is not None:
                record.host, record.port = target.host, target.port
            self.send(client, target.reply)
            return None
        record.protocol = target.protocol
        record.host, record.port = target.host, target.port
        try:
            upstream = self.open(target, record)
        except Refused as refused:
            record.reason = refused.reason
            where = (target.host, target.port, record.rule, record.layer, refused.hint)
            self.send(client, parsers.refused(target.protocol, refused.kind, refused.reason, where))
            return None
        self.send(client, parsers.connected(target.protocol))
        return upstream

    def open(self, target: Target, record: Record) -> Upstream:
        if self.active > self.config.max_connections:
            record.rule, record.layer = "connection cap", "proxy"
            cap = self.config.max_connections
            raise Refused("busy", f"too many concurrent connections (cap {cap})")
        upstream = self.dialer.dial(target.host, target.port, record)
        try:
            self.watch(upstream.sock)
        except Stopped:
            upstream.sock.close()
            raise
        return upstream

    def relay(
        self, client: socket.socket, upstream: Upstream, target: Target, data: bytes, record
    ) -> None:
        """Send what the client sent past its request (plain HTTP: the rewritten head first),
        then relay both ways."""
        relay = Relay(client, upstream.sock, self.config.idle_timeout)
        early = data[target.used :]
        relay.meter.up += len(early) + (target.used if target.send else 0)
        try:
            upstream.sock.sendall(target.send + early)
            feed = parsers.ResponseHeads(self.config.max_header_bytes) if target.rewrite else None
            relay.run(self.config.threads, feed)
        finally:
            record.reason = record.reason or relay.reason
            record.bytes_up, record.bytes_down = relay.meter.up, relay.meter.down
