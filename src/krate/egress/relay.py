"""The egress proxy's one relay: bytes both ways between two sockets, one meter, one idle clock.

Every relayed connection (CONNECT, SOCKS5, plain HTTP, a forwarded port) goes
through `Relay`: it copies each direction, half-closes the other side at end of
stream, counts bytes in one `Meter` and ends the connection when nothing moved
for `idle` seconds. Its two pumps run either as two blocking threads (`threads`,
the caller's choice per backend) or as two coroutines on the event loop; the
loop only supervises them. Measured with bench/bench_egress.py (docs/egress.md):
per GiB the threads cost what the former thread relay did, the coroutines less
than the former asyncio protocols, and plain HTTP (formerly asyncio streams)
half as much as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable

CHUNK = 1024 * 1024  # reads of a bulk transfer
FIRST_CHUNK = 64 * 1024  # reads until one fills it: most connections are short
IDLE_STEP = 0.05  # the supervisor never sleeps less than this


class Meter:
    """Bytes up (client to server) and down, and when the last of them moved."""

    __slots__ = ("up", "down", "last")

    def __init__(self) -> None:
        self.up = self.down = 0
        self.last = time.monotonic()

    def add(self, up: bool, n: int) -> None:
        self.last = time.monotonic()
        if up:
            self.up += n
        else:
            self.down += n


class Buffer:
    """One direction's read buffer: small at first, CHUNK once a read filled it."""

    def __init__(self) -> None:
        self.grow(FIRST_CHUNK)

    def grow(self, size: int) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)

    def got(self, n: int) -> memoryview:
        """The `n` bytes just read (valid until the next read)."""
        out = self.view[:n]
        if n == len(self.data) < CHUNK:
            self.grow(CHUNK)
        return out


class Relay:
    """Both directions of one connection; `run()` returns when both ended, or on idleness."""

    def __init__(self, client: socket.socket, server: socket.socket, idle: float) -> None:
        self.client, self.server, self.idle = client, server, idle
        self.meter = Meter()
        self.reason = ""  # why it ended early, for the record
        self.stopped = False

    def stop(self) -> None:
        """End both directions now (wakes a pump blocked in recv or send)."""
        self.stopped = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def passed(self, up: bool, data, feed: Callable | None):
        """Count `data` and return what goes on (through `feed`, the response head filter)."""
        self.meter.add(up, len(data))
        return data if feed is None else feed(data)

    def ended(self, dst: socket.socket, feed: Callable | None, exc: Exception | None) -> None:
        """One direction reached end of stream (`exc` None) or failed."""
        if feed is not None and not getattr(feed, "done", True):
            self.reason = self.reason or "malformed response head from the server"
            exc = exc or ValueError()
        if exc is not None:
            self.stop()
        elif not self.stopped:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # half-close: the other direction keeps flowing

    def pump(self, src: socket.socket, dst: socket.socket, up: bool, feed) -> None:
        """One direction with blocking calls (in its own thread)."""
        buffer, exc = Buffer(), None
        try:
            while n := src.recv_into(buffer.data):
                dst.sendall(self.passed(up, buffer.got(n), feed))
        except (OSError, ValueError) as error:
            exc = error
        self.ended(dst, feed, exc)

    async def pump_on_loop(self, src: socket.socket, dst: socket.socket, up: bool, feed) -> None:
        """One direction as a coroutine (non-blocking sockets)."""
        loop = asyncio.get_running_loop()
        buffer, exc = Buffer(), None
        try:
            while n := await loop.sock_recv_into(src, buffer.data):
                await loop.sock_sendall(dst, self.passed(up, buffer.got(n), feed))
        except (OSError, ValueError) as error:
            exc = error
        self.ended(dst, feed, exc)

    def in_thread(self, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def run() -> None:
            try:
                self.pump(*args)
            finally:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        threading.Thread(target=run, daemon=True).start()
        return done

    async def run(self, threads: bool, feed: Callable | None = None) -> None:
        """Relay until both directions ended or `idle` seconds passed without a byte."""
        directions = (
            (self.client, self.server, True, None),
            (self.server, self.client, False, feed),
        )
        if threads:
            for sock in (self.client, self.server):
                sock.setblocking(True)
            pumps = [self.in_thread(*d) for d in directions]
        else:
            pumps = [asyncio.ensure_future(self.pump_on_loop(*d)) for d in directions]
        try:
            while pending := [p for p in pumps if not p.done()]:
                left = self.meter.last + self.idle - time.monotonic()
                if left <= 0:
                    self.reason = f"idle for {self.idle:g} s"
                    break
                await asyncio.wait(pending, timeout=max(left, IDLE_STEP))
        finally:
            if not all(p.done() for p in pumps):
                self.stop()
                await asyncio.wait(pumps, timeout=1.0)
            for p in pumps:
                p.cancel()
