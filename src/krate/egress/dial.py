"""The egress proxy's one way out: decide, resolve, refuse special addresses, connect.

A name is resolved only after the policy allowed it, and only an address that
was checked is dialled: loopback, private, link-local, multicast and cloud
metadata addresses are refused unless a rule names that very address (a
`localhost` rule names 127.0.0.1 and ::1). Decisions come from
`krate.policy.decide.net_decider`, the code `krate policy explain` uses.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from krate.policy.decide import NetRule, net_decider
from krate.policy.hosts import HostPattern

# Cloud metadata endpoints that are not covered by "not globally routable".
METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}


class Refused(Exception):
    """The connection is not made; `kind` picks the HTTP status / SOCKS reply."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Stopped(Exception):
    """The proxy is shutting down: the connection ends as it is."""


STEP = 0.1  # a dial checks this often whether the proxy is shutting down
MAX_LOOKUPS = 32


class Upstream(NamedTuple):
    """A connected server socket (blocking) and the address it was dialled at."""

    sock: socket.socket
    address: str


class Verdict(NamedTuple):
    verdict: str
    rule: str
    layer: str


def special(addr) -> bool:
    """Loopback, private, link-local, metadata, multicast or otherwise not global."""
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr in METADATA or addr.is_multicast or not addr.is_global


class Dialer:
    """Opens connections for clients, with the run's network rules (as compiled by krate)."""

    def __init__(self, rules: list[dict], net_default, connect_timeout: float) -> None:
        net_rules = tuple(
            NetRule(
                HostPattern(
                    r["kind"],
                    r["host"],
                    None if r["ports"] is None else frozenset(r["ports"]),
                    r["is_ip"],
                ),
                r["rule"],
                r["layer"],
            )
            for r in rules
        )
        self._decide: Callable = net_decider(net_rules, tuple(net_default))
        self.named: dict[str, list] = {}
        for r in net_rules:
            if r.pattern.kind == "exact" and r.pattern.is_ip:
                self.named.setdefault(r.pattern.host, []).append(r.pattern.ports)
        self.connect_timeout = connect_timeout
        self.stopping = threading.Event()  # set by the shutdown: dials end at once
        # Name lookups running at once (each in a thread, which a slow resolver keeps
        # past the connect timeout): bounded, as asyncio's executor bounded them.
        self.lookups = threading.BoundedSemaphore(MAX_LOOKUPS)

    def decide(self, host: str, port: int) -> Verdict:
        d = self._decide(host, port)
        return Verdict(d.verdict, d.rule, d.layer)

    def explicit(self, addr, port: int) -> bool:
        """Whether some rule names this IP address itself (and this port)."""
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(p is None or port in p for p in self.named.get(str(addr), ()))

    def resolve(self, host: str, port: int) -> list[tuple]:
        """(family, proto, sockaddr) of each address that may be dialled; Refused if none."""
        infos = self.lookup(host, port)
        candidates, refused = [], []
        for family, _type, proto, _name, sockaddr in infos:
            addr = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if special(addr) and not self.explicit(addr, port):
                refused.append(str(addr))
            elif (family, sockaddr) not in [(f, s) for f, _p, s in candidates]:
                candidates.append((family, proto, sockaddr))
        if not candidates:
            raise Refused(
                "denied",
                f"{host} resolves to {', '.join(refused)} (loopback, private, link-local or "
                f"metadata) and no rule names that address; allow localhost:{port} or "
                f"the address explicitly if this is intended",
            )
        return candidates

    def lookup(self, host: str, port: int) -> list:
        """getaddrinfo, in a daemon thread of its own so that it is bounded by the connect
        timeout and by the shutdown (it cannot be interrupted itself)."""
        answer: list = []
        done = threading.Lock()
        done.acquire()
        deadline = time.monotonic() + self.connect_timeout
        while not self.lookups.acquire(timeout=min(STEP, max(deadline - time.monotonic(), 0))):
            self.check_stop()
            if time.monotonic() >= deadline:
                raise Refused("unreachable", f"resolving {host} timed out")

        def look() -> None:
            try:
                answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as exc:
                answer.append(exc)
            finally:
                self.lookups.release()
                done.release()

        try:
            threading.Thread(target=look, daemon=True).start()
        except RuntimeError:
            self.lookups.release()
            raise Refused("unreachable", f"cannot resolve {host} now") from None
        while not done.acquire(timeout=min(STEP, max(deadline - time.monotonic(), 0))):
            self.check_stop()
            if time.monotonic() >= deadline:
                raise Refused("unreachable", f"resolving {host} timed out")
        if isinstance(answer[0], OSError):
            raise Refused("unreachable", f"cannot resolve {host}") from answer[0]
        return answer[0]

    def check_stop(self) -> None:
        if self.stopping.is_set():
            raise Stopped()

    def connect(self, host: str, port: int, candidates: list[tuple]) -> Upstream:
        """Dial the checked addresses in turn; the first that answers (a blocking socket)."""
        last = Refused("unreachable", f"cannot resolve {host}")
        for family, proto, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                self.connect_one(sock, sockaddr)
            except TimeoutError:
                sock.close()
                last = Refused("timeout", f"connecting to {host}:{port} timed out")
                continue
            except OSError as exc:
                sock.close()
                last = Refused("refused", f"connecting to {host}:{port} failed: {exc.strerror}")
                continue
            except BaseException:
                sock.close()
                raise
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return Upstream(sock, sockaddr[0])
        raise last

    def connect_one(self, sock: socket.socket, sockaddr) -> None:
        """A non-blocking connect, waited for in steps (the shutdown ends it), bounded by
        the connect timeout."""
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            deadline = time.monotonic() + self.connect_timeout
            while True:
                self.check_stop()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                _r, writable, _x = select.select([], [sock], [], min(STEP, left))
                if writable:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
        if err:
            raise OSError(err, os.strerror(err))

    def dial(self, host: str, port: int, record) -> Upstream:
        """Decide, resolve, check the addresses and dial exactly a checked one.

        The decision, and the address dialled, go into `record`; Refused says why not.
        """
        record.verdict, record.rule, record.layer = self.decide(host, port)
        if record.verdict != "allow":
            raise Refused("denied", f"{host}:{port} is not allowed by the policy")
        try:
            candidates = self.resolve(host, port)
        except Refused as refused:
            if refused.kind == "denied":
                record.verdict = "deny"
            raise
        upstream = self.connect(host, port, candidates)
        record.address = upstream.address
        return upstream
