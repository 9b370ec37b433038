"""The egress proxy's one way out: decide, resolve, refuse special addresses, connect.

A name is resolved only after the policy allowed it, and only an address that
was checked is dialled: loopback, private, link-local, multicast and cloud
metadata addresses are refused unless a rule names that very address (a
`localhost` rule names 127.0.0.1 and ::1) or a `private_ok` rule names the allowed
host (a mirror inside the user's network; cloud metadata addresses stay refused
even then). Decisions come from `krate.policy.decide.net_decider`, the code
`krate policy explain` uses, and every refusal carries the one flag that would
allow it (`hint`), which the 403 body, the record and krate's summary repeat.
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

from krate.egress.workers import Workers
from krate.policy.decide import NetRule, net_decider, private_rule
from krate.policy.hosts import HostPattern, allow_hint, host_text, normalize_subject
from krate.records import NamedTuple

# Cloud metadata endpoints that are not covered by "not globally routable".
METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}


class Refused(Exception):
    """The connection is not made; `kind` picks the HTTP status / SOCKS reply; `hint` is
    the `krate run` flag that would allow it (denials only)."""

    def __init__(self, kind: str, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.hint = hint


def private_hint(host: str, port: int, addresses: list) -> str:
    """The flag that allows an allowed host whose addresses are special (`allow_hint` is the
    one for a host the policy does not allow).

    A name gets the per-host opt-in; `localhost` and an IP literal get the rule
    naming the address itself; a cloud metadata address needs that too.
    """
    norm = normalize_subject(host)
    is_ip = norm is None or norm[1]
    name = norm[0] if norm is not None else host
    if is_ip or name == "localhost":
        return f"--allow-host {host_text(name, port)}"
    if any(a in METADATA for a in addresses):
        shown = [str(a) for a in addresses if a in METADATA][0]
        return f"--allow-host {host_text(shown, port)}"
    return f"--allow-private-host {name}"


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


def is_address(host: str) -> bool:
    """Whether `host` is an IP address (the parsers give them without brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def special(addr) -> bool:
    """Loopback, private, link-local, metadata, multicast or otherwise not global."""
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr in METADATA or addr.is_multicast or not addr.is_global


class Dialer:
    """Opens connections for clients, with the run's network rules (as compiled by krate)."""

    def __init__(
        self, rules: list[dict], net_default, connect_timeout: float, private_ok=()
    ) -> None:
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
        # network.private_ok: allowed names that may resolve to non-global addresses
        self.private_ok = tuple(
            NetRule(HostPattern(r["kind"], r["host"], None, False), r["rule"], r["layer"])
            for r in private_ok
        )
        self.stopping = threading.Event()  # set by the shutdown: dials end at once
        # Name lookups running at once (each in a thread, which a slow resolver keeps
        # past the connect timeout): bounded, as asyncio's executor bounded them.
        self.lookups = threading.BoundedSemaphore(MAX_LOOKUPS)
        # The lookup threads, kept once started (workers.py). At most MAX_LOOKUPS exist:
        # one starts only while none is idle, and every busy one holds a slot of `lookups`,
        # freed once it is idle again.
        self.workers = Workers()

    def decide(self, host: str, port: int) -> Verdict:
        d = self._decide(host, port)
        return Verdict(d.verdict, d.rule, d.layer)

    def explicit(self, addr, port: int) -> bool:
        """Whether some rule names this IP address itself (and this port)."""
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(p is None or port in p for p in self.named.get(str(addr), ()))

    def private_allowed(self, host: str, addr) -> NetRule | None:
        """The `private_ok` rule letting `host` use special `addr` (never a metadata one)."""
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if addr in METADATA:
            return None
        return private_rule(self.private_ok, host)

    def resolve(self, host: str, port: int, noted: list | None = None) -> list[tuple]:
        """(family, proto, sockaddr) of each address that may be dialled; Refused if none.

        `noted` gets the `private_ok` rule that let a special address through, if one did.
        """
        infos = self.lookup(host, port)
        candidates, refused = [], []
        for family, _type, proto, _name, sockaddr in infos:
            addr = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if special(addr) and not self.explicit(addr, port):
                opt_in = self.private_allowed(host, addr)
                if opt_in is None:
                    refused.append(addr)
                    continue
                if noted is not None and opt_in.rule not in noted:
                    noted.append(opt_in.rule)
            if (family, sockaddr) not in [(f, s) for f, _p, s in candidates]:
                candidates.append((family, proto, sockaddr))
        if not candidates:
            raise special_refusal(host, port, refused)
        return candidates

    def lookup(self, host: str, port: int) -> list:
        """getaddrinfo, in a daemon lookup thread so that it is bounded by the connect
        timeout and by the shutdown (it cannot be interrupted itself). An IP address is
        converted here: that never waits for a resolver."""
        if is_address(host):
            try:
                return socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
                )
            except OSError as exc:
                raise Refused("unreachable", f"cannot resolve {host}") from exc
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

        def after() -> None:
            self.lookups.release()
            done.release()

        try:  # its first job is given directly: nothing is left waiting if it cannot start
            self.workers.submit(look, after)
        except RuntimeError:
            self.lookups.release()
            raise Refused("unreachable", f"cannot resolve {host} now") from None
        while not done.acquire(timeout=min(STEP, max(deadline - time.monotonic(), 0))):
            self.check_stop()
            if time.monotonic() >= deadline:
                raise Refused("unreachable", f"resolving {host} timed out")
        if not answer:  # the lookup failed otherwise (reported on the proxy's stderr)
            raise Refused("unreachable", f"cannot resolve {host}")
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
            if record.layer == "input":  # not a host or port at all: no flag allows it
                raise Refused("denied", f"{host}:{port}: {record.rule}")
            hint = allow_hint(host, port)
            record.hint = hint
            raise Refused(
                "denied", f"{host}:{port} is not allowed by the policy; to allow it: {hint}", hint
            )
        noted: list[str] = []
        try:
            candidates = self.resolve(host, port, noted)
        except Refused as refused:
            if refused.kind == "denied":
                record.verdict = "deny"
                record.hint = refused.hint
            raise
        if noted:  # the record says the opt-in was used, and which rule gave it
            record.reason = f"private address allowed by {', '.join(noted)}"
        upstream = self.connect(host, port, candidates)
        record.address = upstream.address
        return upstream


def special_refusal(host: str, port: int, addresses: list) -> Refused:
    """Refused: every address of an allowed `host` is special, and nothing names them."""
    hint = private_hint(host, port, addresses)
    shown = ", ".join(str(a) for a in addresses)
    kinds = "/".join(dict.fromkeys(address_kind(a) for a in addresses))
    norm = normalize_subject(host)
    if norm is not None and norm[1]:
        what = f"{shown} is a {kinds} address"
    else:
        what = f"{host} resolves to {shown} ({kinds} address; refused against DNS rebinding)"
    return Refused("denied", f"{what}; to allow it: {hint}", hint)


def address_kind(addr) -> str:
    """What kind of special address this is, in the words a user knows."""
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr in METADATA:
        return "cloud metadata"
    for kind in ("loopback", "link_local", "private", "multicast"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-global"


def explain_once(config, target: dict) -> dict:
    """`krate policy explain net`'s answer under the proxy's configuration (wire.Config):
    in the proxy, and in the copy of krate that resolve_early.py forks to resolve the name."""
    dialer = Dialer(config.rules, config.net_default, config.connect_timeout, config.private_ok)
    return explain(dialer, target["host"], target["port"])


def explain(dialer: Dialer, host: str, port: int) -> dict:
    """What a run's connection to host:port would meet, short of connecting: decision,
    then (when allowed) resolution and the special-address check; `krate policy explain`."""
    verdict, rule, layer = dialer.decide(host, port)
    out = {"type": "explain", "verdict": verdict, "rule": rule, "layer": layer}
    if verdict != "allow" and layer == "input":
        return out
    if verdict != "allow":
        out["hint"] = allow_hint(host, port)
        out["reason"] = f"{host}:{port} is not allowed by the policy; to allow it: {out['hint']}"
        return out
    noted: list[str] = []
    try:
        candidates = dialer.resolve(host, port, noted)
    except Refused as refused:
        out["reason"] = refused.reason
        if refused.kind == "denied":
            out["verdict"], out["hint"] = "deny", refused.hint
        return out
    out["addresses"] = list(dict.fromkeys(sockaddr[0] for _f, _p, sockaddr in candidates))
    if noted:
        out["reason"] = f"private address allowed by {', '.join(noted)}"
    return out
