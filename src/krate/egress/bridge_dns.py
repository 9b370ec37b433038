"""The bridge's DNS server: names the policy allows resolve to sandbox-loopback addresses.

Why: Node's `fetch`, Go and Rust programs and raw sockets ignore the proxy
variables; in the sandbox's empty network namespace they fail to resolve. The
bridge answers DNS on 127.0.0.1:53 and 127.0.0.53:53 (UDP and TCP). It asks the
proxy about each new name (`Q name` on the proxy's socket); the proxy decides
with the policy and records a denial. An allowed name gets an A record
127.8.X.Y, fixed for the run, and the bridge listens on that name's allowed
ports at that address before it answers; each connection accepted there is
handed to the proxy as `T name:port`, which decides, resolves and dials as for
CONNECT (the bridge runs as the workload's user: the proxy trusts it with the
name only). A denied name gets NXDOMAIN; AAAA and other types of an allowed
name an empty answer (never silence: an unanswered AAAA costs a client seconds).

Written by hand, not with a DNS library: only the standard library exists in the
sandbox's bridge, and it needs one question and one A record. The bridge loads
this file in a thread after the workload started (bridge.py), so its compile
and the `select` import never delay the workload. It uses the same C modules.
"""

from __future__ import annotations

import _socket
import _thread
import select

MAX_NAMES = 256  # the proxy caps a run's names at the same number (names.py)
MAX_DENIED = 4096  # denials remembered; past that a name is asked again
BASE = (127 << 24) | (8 << 16)  # 127.8.0.0: apart from 127.0.0.1 (proxy ports, forwards)
TTL = 3600  # the address is fixed for the run
A, PTR, AAAA = 1, 12, 28
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
REVERSE = (".in-addr.arpa", ".ip6.arpa")


def address(index: int) -> str:
    n = BASE + index + 1
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end of the question) of a standard query with one question, or None."""
    if len(packet) < 17 or packet[2] & 0x80 or packet[4:6] != b"\x00\x01":
        return None
    labels, at = [], 12
    while True:
        if at >= len(packet):
            return None
        size = packet[at]
        at += 1
        if size == 0:
            break
        if size > 63 or at + size > len(packet):
            return None  # a compression pointer has no place in a question
        labels.append(packet[at : at + size].decode("ascii", "replace").lower())
        at += size
    if at + 4 > len(packet):
        return None
    name = ".".join(labels)
    if len(name) > 253:
        return None
    return name, int.from_bytes(packet[at : at + 2], "big"), at + 4


def reply(packet: bytes, end: int, rcode: int, answer: bytes = b"") -> bytes:
    """The response to `packet`: its id and question, RD kept, RA set, one answer or none."""
    flags = 0x8000 | (packet[2] & 0x79) << 8 | 0x80 | rcode  # QR, opcode, RD; RA
    head = packet[:2] + flags.to_bytes(2, "big") + b"\x00\x01"
    head += (1 if answer else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
    return head + packet[12:end] + answer


def record(rtype: int, rdata: bytes) -> bytes:
    """One answer for the question's name (a pointer to offset 12)."""
    return (
        b"\xc0\x0c" + rtype.to_bytes(2, "big") + b"\x00\x01" + TTL.to_bytes(4, "big")
        + len(rdata).to_bytes(2, "big") + rdata
    )  # fmt: skip


def encode_name(name: str) -> bytes:
    return b"".join(len(p).to_bytes(1, "big") + p.encode() for p in name.split(".")) + b"\0"


class Names:
    """The run's names: allowed ones with their address and listeners, denied ones."""

    def __init__(self, ask, listen, hand_over) -> None:
        self.ask, self.listen, self.hand_over = ask, listen, hand_over
        self.allowed: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.by_address: dict[str, str] = {}
        self.denied: dict[str, int] = {}  # name -> NXDOMAIN, or SERVFAIL past the cap
        self.lock = _thread.allocate_lock()
        self.poll = select.epoll()
        self.targets: dict[int, tuple[object, str]] = {}  # fd -> (listener, "name:port")
        self.next = 0
        _thread.start_new_thread(self.accept, ())

    def lookup(self, name: str) -> str | int:
        """The name's address, or the rcode to answer (NXDOMAIN, SERVFAIL)."""
        with self.lock:
            known = self.allowed.get(name)
            if known is not None:
                return known[0]
            if name in self.denied:
                return self.denied[name]
            try:
                said = self.ask(name)  # past the cap too: the proxy records what was refused
            except OSError:
                return SERVFAIL
            if said in ("N", "F"):  # denied; or the run's cap on names is reached
                if len(self.denied) >= MAX_DENIED:
                    self.denied.clear()
                self.denied[name] = NXDOMAIN if said == "N" else SERVFAIL
                return self.denied[name]
            if not said.startswith("A ") or len(self.allowed) >= MAX_NAMES:
                return SERVFAIL  # a proxy that is going away
            ports = tuple(int(p) for p in said[2:].split(",") if p.isdigit())
            return self.open(name, ports)

    def open(self, name: str, ports: tuple[int, ...]) -> str | int:
        """Listen on every port of `name` at a fresh address (a taken one is skipped)."""
        while self.next < MAX_NAMES * 2:
            where = address(self.next)
            self.next += 1
            socks = []
            for port in ports:
                sock = self.listen(where, port)
                if isinstance(sock, str):
                    break
                socks.append((sock, port))
            else:
                for sock, port in socks:
                    sock.setblocking(False)
                    self.targets[sock.fileno()] = (sock, f"{name}:{port}")
                    self.poll.register(sock.fileno(), select.EPOLLIN)
                self.allowed[name] = (where, ports)
                self.by_address[where] = name
                return where
            for sock, _port in socks:
                sock.close()
        return SERVFAIL

    def accept(self) -> None:
        while True:
            for fd, _events in self.poll.poll():
                sock, target = self.targets[fd]
                try:
                    client_fd, _address = sock._accept()
                except OSError:
                    continue
                client = _socket.socket(sock.family, _socket.SOCK_STREAM, 0, client_fd)
                self.hand_over(client, target)

    def answer(self, packet: bytes) -> bytes | None:
        asked = question(packet)
        if asked is None:  # a header alone, saying FORMERR (or nothing, to a mere scrap)
            return None if len(packet) < 12 else reply(packet, 12, FORMERR)[:4] + bytes(8)
        name, qtype, end = asked
        if (packet[2] >> 3) & 15:  # not a standard query
            return reply(packet, end, NOTIMP)
        if name.endswith(REVERSE) or not name:
            return self.reverse(packet, name, qtype, end)
        found = self.lookup(name)
        if isinstance(found, int):
            return reply(packet, end, found)
        if qtype == A:
            return reply(packet, end, NOERROR, record(A, _socket.inet_aton(found)))
        return reply(packet, end, NOERROR)  # AAAA and the rest: none, at once

    def reverse(self, packet: bytes, name: str, qtype: int, end: int) -> bytes:
        """PTR for our own addresses; NXDOMAIN for every other (never asked of the proxy)."""
        parts = name.split(".")
        if qtype == PTR and len(parts) == 6 and name.endswith(REVERSE[0]):
            owner = self.by_address.get(".".join(reversed(parts[:4])))
            if owner is not None:
                return reply(packet, end, NOERROR, record(PTR, encode_name(owner)))
        return reply(packet, end, NXDOMAIN)


def serve_udp(sock, names: Names) -> None:
    while True:
        try:
            packet, peer = sock.recvfrom(4096)
        except OSError:
            continue
        try:
            _thread.start_new_thread(udp_one, (sock, names, packet, peer))
        except RuntimeError:  # no thread to be had (a process limit): answer in line
            udp_one(sock, names, packet, peer)


def udp_one(sock, names: Names, packet: bytes, peer) -> None:
    out = names.answer(packet)
    if out is not None:
        try:  # noqa: SIM105 (contextlib is not loaded in the bridge)
            sock.sendto(out, peer)
        except OSError:
            pass


def serve_tcp(sock, names: Names) -> None:
    while True:
        try:
            fd, _peer = sock._accept()
        except OSError:
            continue
        conn = _socket.socket(sock.family, _socket.SOCK_STREAM, 0, fd)
        try:
            _thread.start_new_thread(tcp_one, (conn, names))
        except RuntimeError:
            conn.close()


def tcp_one(conn, names: Names) -> None:
    """Length-prefixed queries (RFC 7766) until the client closes."""
    conn.settimeout(10.0)
    try:
        while True:
            size = recv_exact(conn, 2)
            if size is None:
                return
            packet = recv_exact(conn, int.from_bytes(size, "big"))
            if packet is None:
                return
            out = names.answer(packet)
            if out is None:
                return
            conn.sendall(len(out).to_bytes(2, "big") + out)
    except OSError:
        return
    finally:
        conn.close()


def recv_exact(conn, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(sockets: list, ask, listen, hand_over) -> None:
    """Answer on the bound port-53 sockets (UDP and TCP), each in its own thread."""
    names = Names(ask, listen, hand_over)
    for sock in sockets:
        kind = serve_udp if sock.type == _socket.SOCK_DGRAM else serve_tcp
        _thread.start_new_thread(kind, (sock, names))
