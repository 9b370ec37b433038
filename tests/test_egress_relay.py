"""The relay with threads (bubblewrap's choice) starts its two threads only for bulk.

Most connections a package manager makes are short (an index page, a package's
metadata): they are relayed by the connection's own thread with a selector, and only a
connection whose read fills the first buffer moves on to two blocking threads, carrying
what the selector read and had not sent yet, and the response-head filter's state.
Checked here on socket pairs, byte for byte; the proxy's own tests
(test_egress_proxy.py) relay real clients through both modes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from krate.egress import relay as relay_mod
from krate.egress.parsers import ResponseHeads
from krate.egress.relay import FIRST_CHUNK, Relay


@pytest.fixture
def started(monkeypatch):
    """The threads the relay starts (the test's own helpers are started before)."""
    out: list[threading.Thread] = []
    real = threading.Thread

    class Counting(real):
        def start(self) -> None:
            out.append(self)
            super().start()

    def patch() -> None:
        monkeypatch.setattr(relay_mod.threading, "Thread", Counting)

    return out, patch


def pairs():
    client_app, client_proxy = socket.socketpair()
    server_proxy, server_app = socket.socketpair()
    return client_app, client_proxy, server_proxy, server_app


def read_all(sock: socket.socket, into: list[bytes]) -> None:
    while chunk := sock.recv(1 << 16):
        into.append(chunk)


def test_a_short_connection_starts_no_thread(started):
    threads, patch = started
    client_app, client_proxy, server_proxy, server_app = pairs()
    client_app.sendall(b"GET / HTTP/1.1\r\n\r\n")
    client_app.shutdown(socket.SHUT_WR)
    server_app.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    server_app.shutdown(socket.SHUT_WR)
    patch()
    relay = Relay(client_proxy, server_proxy, idle=5.0)
    relay.run(True, ResponseHeads(65536))
    assert threads == []
    assert server_app.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
    answer = client_app.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    assert b"Connection: close" in answer
    assert client_app.recv(10) == b""  # half-closed on: the client sees the end
    assert (relay.meter.up, relay.meter.down, relay.reason) == (18, 40, "")


@pytest.mark.parametrize("threaded", [True, False])
def test_a_bulk_transfer_moves_to_threads_intact(started, threaded):
    """4 MiB down behind a response head: with threads the relay hands over after the
    first full read; every byte arrives once, in order, the head rewritten once."""
    threads, patch = started
    client_app, client_proxy, server_proxy, server_app = pairs()
    body = os.urandom(4 << 20)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    data = head + body
    server_app.sendall(data[: 2 * FIRST_CHUNK])  # queued: the first read fills its buffer

    def serve() -> None:
        server_app.sendall(data[2 * FIRST_CHUNK :])
        server_app.shutdown(socket.SHUT_WR)

    got: list[bytes] = []
    helpers = [
        threading.Thread(target=serve),
        threading.Thread(target=read_all, args=(client_app, got)),
    ]
    for helper in helpers:
        helper.start()
    client_app.sendall(b"GET /big HTTP/1.1\r\n\r\n")
    client_app.shutdown(socket.SHUT_WR)
    patch()
    relay = Relay(client_proxy, server_proxy, idle=5.0)
    relay.run(threaded, ResponseHeads(65536))
    for helper in helpers:
        helper.join(10)
    received = b"".join(got)
    rewritten, _, rest = received.partition(b"\r\n\r\n")
    assert b"Connection: close" in rewritten
    assert hashlib.sha256(rest).digest() == hashlib.sha256(body).digest()
    assert server_app.recv(100) == b"GET /big HTTP/1.1\r\n\r\n"
    assert relay.meter.down == len(data) and relay.meter.up == 21
    assert relay.reason == ""
    if threaded:
        assert 1 <= len(threads) <= 2  # the directions still open when the bulk began
    else:
        assert threads == []
    for sock in (client_app, client_proxy, server_proxy, server_app):
        sock.close()
