"""The egress proxy's one relay: bytes both ways between two sockets, one meter, one idle clock.

Every relayed connection (CONNECT, SOCKS5, plain HTTP, a forwarded port) goes
through `Relay`: it copies each direction, half-closes the other side at end of
stream, counts bytes in one `Meter` and ends the connection when nothing moved
for `idle` seconds. Its two directions run both in the connection's thread with
a selector (no asyncio: the proxy does not import it); with `threads` (the
caller's choice per backend) a connection that turns out to be a bulk transfer
(a read filled FIRST_CHUNK) moves on to two blocking threads, the connection's
own thread supervising them. Most connections are short (an index page, a
package's metadata): starting two threads for each cost about 0.2 ms of CPU, a
quarter of what the proxy spent on one. Measured with bench/bench_egress.py
(docs/egress.md).
"""

from __future__ import annotations

import contextlib
import selectors
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

    def pump(
        self, src: socket.socket, dst: socket.socket, up: bool, feed, first: bytes, more: bool
    ) -> None:
        """One direction with blocking calls (in its own thread): `first` (what the selector
        read and did not send yet) goes first; `more` is false once `src` reached its end."""
        buffer, exc = Buffer(), None
        try:
            if first:
                dst.sendall(first)
            while more and (n := src.recv_into(buffer.data)):
                dst.sendall(self.passed(up, buffer.got(n), feed))
        except (OSError, ValueError) as error:
            exc = error
        self.ended(dst, feed, exc)

    def pump_both(self, feed: Callable | None, until_bulk: bool = False) -> tuple | None:
        """Both directions in this one thread, with a selector (non-blocking sockets).

        None once the relay ended; with `until_bulk`, as soon as a read filled its first
        buffer, (pending, reading, shut) per direction, for the threads to go on from."""
        ends = ((self.client, self.server, True, None), (self.server, self.client, False, feed))
        buffers = (Buffer(), Buffer())
        pending = [b"", b""]  # per direction: read from its source, not yet sent on
        reading, shut = [True, True], [False, False]
        with selectors.DefaultSelector() as selector:
            while not self.stopped and not all(shut):
                wanted: dict[socket.socket, int] = {}
                for i, (src, dst, _up, _feed) in enumerate(ends):
                    if pending[i]:
                        wanted[dst] = wanted.get(dst, 0) | selectors.EVENT_WRITE
                    elif reading[i]:
                        wanted[src] = wanted.get(src, 0) | selectors.EVENT_READ
                left = self.meter.last + self.idle - time.monotonic()
                if left <= 0:
                    self.reason = f"idle for {self.idle:g} s"
                    return
                for sock, events in wanted.items():
                    selector.register(sock, events)
                try:
                    ready = {k.fileobj: e for k, e in selector.select(max(left, IDLE_STEP))}
                finally:
                    for sock in wanted:
                        selector.unregister(sock)
                for i, (src, dst, up, fed) in enumerate(ends):
                    try:
                        if pending[i] and ready.get(dst, 0) & selectors.EVENT_WRITE:
                            pending[i] = pending[i][dst.send(pending[i]) :]
                        elif reading[i] and ready.get(src, 0) & selectors.EVENT_READ:
                            if n := src.recv_into(buffers[i].data):
                                pending[i] = bytes(self.passed(up, buffers[i].got(n), fed))
                            else:
                                reading[i] = False
                    except (BlockingIOError, InterruptedError):
                        continue
                    except (OSError, ValueError) as error:
                        self.ended(dst, fed, error)
                        return
                    if not reading[i] and not pending[i] and not shut[i]:
                        shut[i] = True
                        self.ended(dst, fed, None)
                if until_bulk and not all(shut) and any(len(b.data) == CHUNK for b in buffers):
                    return pending, reading, shut
        return None

    def run(self, threads: bool, feed: Callable | None = None) -> None:
        """Relay until both directions ended or `idle` seconds passed without a byte."""
        for sock in (self.client, self.server):
            sock.setblocking(False)
        state = self.pump_both(feed, until_bulk=threads)
        if state is None:
            if self.reason and not self.stopped:
                self.stop()
            return
        pending, reading, shut = state
        for sock in (self.client, self.server):
            sock.setblocking(True)
        done = threading.Semaphore(0)

        def pump(*args) -> None:
            try:
                self.pump(*args)
            finally:
                done.release()

        up = (self.client, self.server, True, None, pending[0], reading[0])
        down = (self.server, self.client, False, feed, pending[1], reading[1])
        todo = [args for args, ended in zip((up, down), shut, strict=True) if not ended]
        started = 0
        for args in todo:
            try:
                threading.Thread(target=pump, args=args, daemon=True).start()
            except RuntimeError:  # no thread to be had: this connection ends
                self.reason = "the proxy could not start a relay thread"
                break
            started += 1
        finished = 2 - started  # a direction ended already, or never started, counts as ended
        try:
            while finished < 2 and started == len(todo):
                left = self.meter.last + self.idle - time.monotonic()
                if left <= 0:
                    self.reason = f"idle for {self.idle:g} s"
                    break
                if done.acquire(timeout=max(left, IDLE_STEP)):
                    finished += 1
        finally:
            if finished < 2:
                self.stop()
                deadline = time.monotonic() + 1.0
                while finished < 2 and done.acquire(timeout=max(deadline - time.monotonic(), 0)):
                    finished += 1
