"""The proxy's answer to the bridge's DNS: may this name resolve in the sandbox, and on which ports?

The bridge (bridge_dns.py) asks `Q name` once per new name a workload looks up.
The answer is `A 80,443` (the ports some rule allows for the name; the bridge
listens on exactly those), `N` (no rule allows the name on any port: the bridge
answers NXDOMAIN, and the lookup is recorded here as a denial, like a refused
connection) or `F` (the run's cap on names is reached: recorded too). An allowed
lookup is not recorded: the connection that follows is, decided again and dialled
exactly as a CONNECT (`T name:port`, handler.py). The bridge runs as the workload's
user, so nothing it says is believed beyond the name it asks about.

A rule for any port (`host:*`) cannot be covered by listeners: such a name gets
the web ports 80 and 443, plus any port another rule names for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from krate.egress.dial import Dialer
from krate.egress.wire import Record
from krate.policy.hosts import WEB_PORTS, normalize_subject

MAX_NAMES = 256  # the bridge's address pool holds as many (bridge_dns.MAX_NAMES)


class Names:
    """Decides the bridge's lookups with the run's rules; reports denials through `emit`."""

    def __init__(self, rules: list[dict], dialer: Dialer, proxy, cap: int = MAX_NAMES) -> None:
        self.rules = [r for r in rules if not r["is_ip"]]
        self.dialer, self.proxy, self.cap = dialer, proxy, cap
        self.allowed: dict[str, str] = {}
        self.lock = threading.Lock()  # the bridge may ask from several threads at once

    def __call__(self, asked: str) -> str:
        with self.lock:
            return self.answer(asked)

    def ports(self, name: str) -> list[int]:
        """The ports some rule allows for `name`, confirmed by the decision itself."""
        wanted: set[int] = set()
        for r in self.rules:
            kind, host = r["kind"], r["host"]
            if kind == "exact" and name != host:
                continue
            if kind == "suffix" and not name.endswith("." + host):
                continue
            wanted |= WEB_PORTS if r["ports"] is None else set(r["ports"])
        return sorted(p for p in wanted if self.dialer.decide(name, p).verdict == "allow")

    def answer(self, asked: str) -> str:
        norm = normalize_subject(asked)
        name = norm[0] if norm is not None and not norm[1] else None
        if name is not None and name in self.allowed:
            return self.allowed[name]
        ports = [] if name is None else self.ports(name)
        if not ports:
            self.deny(name or asked[:253], "no rule allows this name; answered NXDOMAIN")
            return "N"
        if len(self.allowed) >= self.cap:
            self.deny(name, f"more than {self.cap} names looked up in this run", cap=True)
            return "F"
        self.allowed[name] = "A " + ",".join(map(str, ports))
        return self.allowed[name]

    def deny(self, name: str, reason: str, cap: bool = False) -> None:
        """One decision line per lookup (the recorder keeps the first of each name)."""
        record = Record(self.proxy.next_number(), protocol="dns", host=name, reason=reason)
        if cap:
            record.rule, record.layer = "name cap", "proxy"
        else:
            decided = self.dialer.decide(name, 443)
            record.rule, record.layer = decided.rule, decided.layer
        emit: Callable[[dict], None] = self.proxy.emit
        emit(record.line())
