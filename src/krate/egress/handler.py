"""One client of the egress proxy: read its request, dial, answer, relay, report.

HTTP CONNECT, plain HTTP with absolute URIs and SOCKS5 are told apart by the
first byte and parsed by `parsers` (pure); `Dialer.dial` decides and connects;
`Relay` moves the bytes. Each connection ends with one decision line (`Record`),
metadata only: never a URL path, query, header or body. On the loopback listener
(`Config.secret`) a client must first give this run's credential: the port is
reachable by every local process, the bridge's socket only by this run's sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from krate.egress import parsers
from krate.egress.dial import Dialer, Refused, Upstream
from krate.egress.parsers import Refusal, Target
from krate.egress.relay import Relay
from krate.egress.wire import Config, Record

READ_CHUNK = 64 * 1024


class Proxy:
    """Serves clients; counts them, and tracks their tasks for the shutdown."""

    def __init__(self, config: Config, dialer: Dialer, emit: Callable[[dict], None]) -> None:
        self.config, self.dialer, self.emit = config, dialer, emit
        self.count = 0
        self.active = 0
        self.tasks: set[asyncio.Task] = set()

    async def handle(self, client: socket.socket, forward: tuple | None = None) -> None:
        """One client: HTTP, CONNECT or SOCKS5, or (`forward`) a raw stream to that target:
        (host, port) a forwarded loopback port, (host, port, "dns") a name the bridge's
        DNS answered."""
        self.count += 1
        self.active += 1
        record = Record(self.count)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        upstream = None
        try:
            client.setblocking(False)
            if forward is not None:
                record.protocol = forward[2] if len(forward) > 2 else "forward"
                target: Target | Refusal = Target(record.protocol, *forward[:2], used=0)
                data = b""
            else:
                target, data = await self.request(client, record)
            upstream = await self.connect(client, target, record)
            if upstream is not None and isinstance(target, Target):
                await self.relay(client, upstream, target, data, record)
        except TimeoutError:
            record.reason = record.reason or "client sent no complete request in time"
        except (ConnectionError, OSError) as exc:
            record.reason = record.reason or f"client connection failed: {type(exc).__name__}"
        except asyncio.CancelledError:
            record.reason = record.reason or "proxy shut down"
        finally:
            for sock in (client, upstream.sock if upstream else None):
                if sock is not None:
                    sock.close()
            self.active -= 1
            if task is not None:
                self.tasks.discard(task)
            self.emit(record.line())

    # -- the request

    async def request(self, client: socket.socket, record: Record) -> tuple:
        """(Target or Refusal, every byte the client sent so far)."""
        secret = self.config.secret  # the loopback listener's per-run credential, or None
        data = await self.read(client, b"", lambda d: 1)
        if not data:
            record.reason = "client closed before a request"
            return Refusal("empty", record.reason), data
        if data[0] != 5:
            record.protocol = "http"
            limit = self.config.max_header_bytes
            data = await self.read(client, data, lambda d: parsers.http_head_size(d, limit))
            return parsers.http_request(data, limit, secret), data
        record.protocol = "socks5"
        data = await self.read(client, data, parsers.socks_greeting_size)
        greeted = parsers.socks_greeting(data, userpass=secret is not None)
        if isinstance(greeted, Refusal):
            return greeted, data
        await self.send(client, greeted.reply)
        data = data[greeted.used :]
        if secret is not None:  # RFC 1929: this run's user name and secret
            data = await self.read(client, data, parsers.socks_auth_size)
            greeted = parsers.socks_auth(data, secret)
            if isinstance(greeted, Refusal):
                return greeted, data
            await self.send(client, greeted.reply)
            data = data[greeted.used :]
        rest = await self.read(client, data, parsers.socks_request_size)
        return parsers.socks_request(rest), rest

    async def read(self, sock: socket.socket, data: bytes, size: Callable) -> bytes:
        """Read until `size(data)` bytes have come (None: until `size` says so), or EOF.

        `size` returning 0 means "too large already": stop reading.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.config.header_timeout):
            while True:
                want = size(data)
                if want == 0 or (want is not None and len(data) >= want):
                    return data
                chunk = await loop.sock_recv(sock, READ_CHUNK)
                if not chunk:
                    return data
                data += chunk

    async def send(self, sock: socket.socket, data: bytes) -> None:
        if data:
            with contextlib.suppress(ConnectionError):
                await asyncio.get_running_loop().sock_sendall(sock, data)

    # -- the connection

    async def connect(
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
            await self.send(client, target.reply)
            return None
        record.protocol = target.protocol
        record.host, record.port = target.host, target.port
        try:
            upstream = await self.open(target, record)
        except Refused as refused:
            record.reason = refused.reason
            where = (target.host, target.port, record.rule, record.layer, refused.hint)
            await self.send(
                client, parsers.refused(target.protocol, refused.kind, refused.reason, where)
            )
            return None
        await self.send(client, parsers.connected(target.protocol))
        return upstream

    async def open(self, target: Target, record: Record) -> Upstream:
        if self.active > self.config.max_connections:
            record.rule, record.layer = "connection cap", "proxy"
            cap = self.config.max_connections
            raise Refused("busy", f"too many concurrent connections (cap {cap})")
        return await self.dialer.dial(target.host, target.port, record)

    async def relay(
        self, client: socket.socket, upstream: Upstream, target: Target, data: bytes, record
    ) -> None:
        """Send what the client sent past its request (plain HTTP: the rewritten head first),
        then relay both ways."""
        relay = Relay(client, upstream.sock, self.config.idle_timeout)
        early = data[target.used :]
        relay.meter.up += len(early) + (target.used if target.send else 0)
        try:
            await asyncio.get_running_loop().sock_sendall(upstream.sock, target.send + early)
            feed = parsers.ResponseHeads(self.config.max_header_bytes) if target.rewrite else None
            await relay.run(self.config.threads, feed)
        finally:
            record.reason = record.reason or relay.reason
            record.bytes_up, record.bytes_down = relay.meter.up, relay.meter.down
