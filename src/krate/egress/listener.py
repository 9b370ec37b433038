"""Where the egress proxy's clients come from: a Unix socket (Linux) or a loopback port (macOS).

On Linux the socket is bind-mounted into the sandbox, and the in-sandbox bridge
does not relay: it hands each client socket it accepted over the Unix socket
(SCM_RIGHTS, after a NUL byte and `P` or `F host:port`), so bytes are copied
once, in the proxy. A handed-over descriptor must be a TCP socket (it lives in
the sandbox's network namespace); anything else is closed unread. `T name:port`
is a client of the bridge's DNS (a name it answered), `Q name` (no descriptor)
asks whether a name may be answered at all (names.py). A connection
that does not start with the NUL byte is served as a client itself. On macOS
the workload reaches a loopback TCP port directly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

from krate.egress.parsers import split_hostport

HANDOFF = b"\x00"  # first byte of a bridge's hand-over; no HTTP or SOCKS5 client sends it
BACKLOG = 512
ACCEPT_STEP = 0.25  # how soon the accepting thread notices the listener was closed

Handle = Callable[[socket.socket, "tuple | None"], None]
Start = Callable[[Handle, socket.socket], None]  # serve a client in a thread of its own
Query = Callable[[str], str]  # a name the workload looked up -> the answer line


class Listener:
    """Accepts clients in a thread and passes each to `start(serve, sock)`, which serves it
    in a thread of its own (`serve(sock, None)`: `handle`, or `take` on the Unix socket)."""

    def __init__(
        self, listen: str, handle: Handle, start: Start, header_timeout: float,
        query: Query | None = None,
    ) -> None:  # fmt: skip
        self.kind, _, self.where = listen.partition(":")
        self.handle, self.start, self.header_timeout = handle, start, header_timeout
        self.query = query
        self.sock: socket.socket | None = None
        self.closed = False

    def open(self, socket_uid: int | None) -> object:
        """Bind and listen, and start accepting; returns the address for the ready line."""
        if self.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Made under another name and renamed once it has its owner: the bridge, waiting
            # for the name, never finds a socket it may not connect to yet.
            making = self.where + ".new"
            sock.bind(making)
            os.chmod(making, 0o600)
            if socket_uid is not None:
                os.chown(making, socket_uid, -1)
            sock.listen(BACKLOG)
            os.rename(making, self.where)
            address: object = self.where
        else:
            host, _, port = self.where.rpartition(":")
            sock = socket.create_server((host, int(port)), backlog=BACKLOG)
            address = sock.getsockname()[1]
        sock.settimeout(ACCEPT_STEP)  # accept() wakes up this often to see close()
        self.sock = sock
        threading.Thread(target=self.accept, args=(sock,), daemon=True).start()
        return address

    def accept(self, sock: socket.socket) -> None:
        serve = self.take if self.kind == "unix" else self.handle
        while not self.closed:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.closed:
                    return
                time.sleep(ACCEPT_STEP)  # out of descriptors: the backlog waits
                continue
            if self.closed:
                conn.close()
                return
            conn.setblocking(True)
            self.start(serve, conn)

    def close(self) -> None:
        """Accept no more clients."""
        self.closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    def remove(self) -> None:
        """The Unix socket's folder is this run's alone (socket and bridge copy): leave
        nothing behind, even when krate itself was killed."""
        if self.kind != "unix":
            return
        folder = os.path.dirname(self.where)
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.rmdir(folder)

    # -- the Unix socket: clients handed over by the in-sandbox bridge

    def take(self, conn: socket.socket, _forward=None) -> None:
        """Serve a connection on the Unix socket: a handed-over client, or the caller itself."""
        forward = None
        try:
            conn.settimeout(self.header_timeout)  # kept for the hand-over's own reads
            if conn.recv(1, socket.MSG_PEEK) == HANDOFF:
                if conn.recv(2, socket.MSG_PEEK) == HANDOFF + b"Q" and self.query is not None:
                    self.answer(conn)
                    return
                conn, forward = handed_over(conn)
        except (TimeoutError, OSError, ValueError):
            conn.close()
            return
        self.handle(conn, forward)

    def answer(self, conn: socket.socket) -> None:
        """`Q name`: one line back (names.py); any descriptor sent along is closed."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, 512, 4, socket.MSG_CMSG_CLOEXEC)
            for fd in fds:
                os.close(fd)
            name = data[2:].decode("ascii", "replace").strip()
            conn.setblocking(True)
            conn.settimeout(2.0)
            conn.sendall((self.query(name) + "\n").encode())
        finally:
            conn.close()


def handed_over(conn: socket.socket) -> tuple[socket.socket, tuple | None]:
    """The client socket in a bridge's hand-over, and the forwarded target if any:
    (host, port) for `F`, (host, port, "dns") for `T`.

    Raises ValueError (after closing everything) unless exactly one TCP socket came."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 512, 4, socket.MSG_CMSG_CLOEXEC)
    finally:
        conn.close()
    client = None
    for fd in fds:
        if client is not None:
            os.close(fd)
            continue
        try:
            client = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise ValueError("not a socket") from None
    if client is None:
        raise ValueError("no socket handed over")
    if client.family not in (socket.AF_INET, socket.AF_INET6) or client.type != (
        socket.SOCK_STREAM
    ):
        client.close()
        raise ValueError("not a TCP socket")
    text = data[1:].decode("ascii", "replace").strip()
    if text == "P":
        return client, None
    if text.startswith(("F ", "T ")):
        try:
            host, port = split_hostport(text[2:], None)
        except ValueError:
            pass
        else:
            return client, ((host, port) if text[0] == "F" else (host, port, "dns"))
    client.close()
    raise ValueError("malformed hand-over")
