"""The egress proxy's one way out: decide, resolve, refuse special addresses, connect.

A name is resolved only after the policy allowed it, and only an address that
was checked is dialled: loopback, private, link-local, multicast and cloud
metadata addresses are refused unless a rule names that very address (a
`localhost` rule names 127.0.0.1 and ::1). Decisions come from
`krate.policy.decide.net_decider`, the code `krate policy explain` uses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from krate.policy.decide import NetRule, net_decider
from krate.policy.hosts import HostPattern
from krate.records import NamedTuple

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


class Upstream(NamedTuple):
    """A connected server socket (non-blocking) and the address it was dialled at."""

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

    def decide(self, host: str, port: int) -> Verdict:
        d = self._decide(host, port)
        return Verdict(d.verdict, d.rule, d.layer)

    def explicit(self, addr, port: int) -> bool:
        """Whether some rule names this IP address itself (and this port)."""
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(p is None or port in p for p in self.named.get(str(addr), ()))

    async def resolve(self, host: str, port: int) -> list[tuple]:
        """(family, proto, sockaddr) of each address that may be dialled; Refused if none."""
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.connect_timeout
            )
        except TimeoutError as exc:
            raise Refused("unreachable", f"resolving {host} timed out") from exc
        except OSError as exc:
            raise Refused("unreachable", f"cannot resolve {host}") from exc
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

    async def connect(self, host: str, port: int, candidates: list[tuple]) -> Upstream:
        """Dial the checked addresses in turn; the first that answers."""
        loop = asyncio.get_running_loop()
        last = Refused("unreachable", f"cannot resolve {host}")
        for family, proto, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, sockaddr), self.connect_timeout)
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return Upstream(sock, sockaddr[0])
        raise last

    async def dial(self, host: str, port: int, record) -> Upstream:
        """Decide, resolve, check the addresses and dial exactly a checked one.

        The decision, and the address dialled, go into `record`; Refused says why not.
        """
        record.verdict, record.rule, record.layer = self.decide(host, port)
        if record.verdict != "allow":
            raise Refused("denied", f"{host}:{port} is not allowed by the policy")
        try:
            candidates = await self.resolve(host, port)
        except Refused as refused:
            if refused.kind == "denied":
                record.verdict = "deny"
            raise
        upstream = await self.connect(host, port, candidates)
        record.address = upstream.address
        return upstream
