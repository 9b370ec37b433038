"""Host patterns for `[network] allow`: parsing, normalising, matching, and set algebra.

A pattern is `host`, `*.suffix` (subdomains at any depth, never the apex), `*`
(any host), an IPv4 or IPv6 literal (IPv6 in brackets when a port follows), each
optionally with `:PORT` or `:*`. Without a port a pattern means the web ports 80
and 443. Names compare case-insensitively, without a trailing dot, in IDNA
(punycode) form; `localhost` also names 127.0.0.1 and ::1.

`covers` and `intersect` let an untrusted project file narrow the network list
without ever widening it. Nothing here does I/O or name resolution.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from krate import hostport
from krate.records import NamedTuple

WEB_PORTS = frozenset({80, 443})
ANY = "any"
SUFFIX = "suffix"
EXACT = "exact"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


class HostPattern(NamedTuple):
    kind: str  # ANY | SUFFIX | EXACT
    host: str  # normalized; for SUFFIX the parent domain (without "*."); "" for ANY
    ports: frozenset[int] | None  # None = any port
    is_ip: bool = False

    def render(self) -> str:
        """The canonical text of this pattern (what `policy show` prints)."""
        if self.kind == ANY:
            host = "*"
        elif self.kind == SUFFIX:
            host = "*." + self.host
        else:
            host = self.host
        if self.ports == WEB_PORTS:
            return host
        if ":" in host:
            host = f"[{host}]"
        if self.ports is None:
            return host + ":*"
        return ",".join(f"{host}:{p}" for p in sorted(self.ports))

    def matches(self, host: str, port: int, host_is_ip: bool) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        if self.kind == ANY:
            return True
        if self.kind == EXACT:
            return host == self.host
        return not host_is_ip and host.endswith("." + self.host)


def normalize_name(name: str) -> str:
    """Lower-case, no trailing dot, IDNA-encoded; raise ValueError if it is not a host name."""
    if not name:
        raise ValueError("empty host name")
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except (UnicodeError, ValueError) as exc:
            raise ValueError(f"not a valid international host name ({exc})") from None
    name = name.lower()
    if len(name) > 253:
        raise ValueError("host name longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            if not label:
                raise ValueError("empty label (two dots in a row, or a leading dot)")
            raise ValueError(f"`{label}` is not a valid host name label")
    if labels[-1].isdigit():
        raise ValueError("looks like an IP address but is not a valid one")
    return name


def normalize_ip(text: str) -> str | None:
    """The canonical text of an IP literal (IPv4-mapped IPv6 becomes IPv4), or None."""
    if "%" in text:
        return None  # zone ids are not supported
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_PLAIN_CHARS = re.compile(r"[a-z0-9_.-]+\Z").match


def _plain_name(name: str) -> bool:
    """A quick yes for ordinary ASCII names (the slow path decides everything else)."""
    return (
        len(name) <= 63
        and _PLAIN_CHARS(name) is not None
        and ".." not in name
        and name[0] not in ".-"
        and name[-1] != "-"
        and ".-" not in name
        and "-." not in name
        and not name.rpartition(".")[2].isdigit()
    )


@lru_cache(maxsize=8192)
def normalize_subject(host: str) -> tuple[str, bool] | None:
    """Normalise a host a workload asks for: (host, is_ip), or None when it is not a host."""
    # Fast path: an ASCII name whose last label is not a number (so not an IPv4 address).
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if name and _plain_name(name):
        return name, False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ip = normalize_ip(host)
        return None if ip is None or ":" not in host else (ip, True)
    ip = normalize_ip(host)
    if ip is not None:
        return ip, True
    try:
        return normalize_name(host), False
    except ValueError:
        return None


def _parse_port(text: str) -> frozenset[int] | None:
    if text == "*":
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port `{text}` is not a number from 1 to 65535 or `*`")
    return frozenset({int(text)})


def parse_pattern(text: str) -> tuple[HostPattern, ...]:
    """Parse one allow entry; raise ValueError with a message a user can act on.

    Returns several patterns only for `localhost` (the name and both loopback addresses).
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty host pattern")
    if "://" in raw or "/" in raw:
        raise ValueError(f"`{text}` is a URL or path; write only the host, e.g. `example.com`")
    if any(c.isspace() for c in raw):
        raise ValueError(f"`{text}` contains spaces")
    ports: frozenset[int] | None = WEB_PORTS
    host, port, bracketed = _split(text)
    if port is not None:
        ports = _parse_port(port)
    if bracketed:
        ip = normalize_ip(host)
        if ip is None or ":" not in host:
            raise ValueError(f"`{host}` in brackets is not an IPv6 address")
        return (HostPattern(EXACT, ip, ports, True),)
    if raw.count(":") > 1:
        ip = normalize_ip(raw)
        if ip is None:
            raise ValueError(
                f"`{text}` is not a valid IPv6 address (use [ADDRESS]:PORT for a port)"
            )
        return (HostPattern(EXACT, ip, ports, True),)
    if host == "*":
        return (HostPattern(ANY, "", ports),)
    if host.startswith("*."):
        rest = host[2:]
        if "*" in rest:
            raise ValueError(f"`{text}`: only one leading `*.` wildcard is allowed")
        if normalize_ip(rest) is not None:
            raise ValueError(f"`{text}`: a wildcard cannot be used with an IP address")
        return (HostPattern(SUFFIX, normalize_name(rest), ports),)
    if "*" in host:
        raise ValueError(f"`{text}`: `*` is allowed only as `*` or a leading `*.`")
    ip = normalize_ip(host)
    if ip is not None:
        return (HostPattern(EXACT, ip, ports, True),)
    name = normalize_name(host)
    if name == "localhost":
        return tuple(HostPattern(EXACT, n, ports, n != "localhost") for n in LOOPBACK_NAMES)
    return (HostPattern(EXACT, name, ports),)


def parse_private(text: str) -> HostPattern:
    """One `private_ok` entry: a host name or `*.suffix`, without a port; raise ValueError.

    It lets an allowed name resolve to a private, loopback or otherwise non-global
    address. An IP address needs no such entry (an allow rule naming the address is
    explicit already), and `*` would switch the guard off for every host.
    """
    raw = text.strip()
    if raw and ("://" not in raw and "/" not in raw):
        host, port, bracketed = _split(raw)
        if port is not None:
            raise ValueError(f"`{text}`: name the host without a port (`{host}`)")
        if bracketed or normalize_ip(host) is not None or raw.count(":") > 1:
            raise ValueError(
                f"`{text}` is an address: allow it with `allow` (or --allow-host), "
                "which names it explicitly"
            )
        if host == "*":
            raise ValueError(
                "`*` would let every host resolve to private addresses; name the hosts"
            )
    pattern = parse_pattern(text)[0]
    return HostPattern(pattern.kind, pattern.host, None, False)


def host_contains(outer: HostPattern, inner: HostPattern) -> bool:
    """Does every host `inner` names also match `outer` (ports aside)?"""
    if outer.kind == ANY:
        return True
    if inner.kind == ANY:
        return False
    if outer.kind == EXACT:
        return inner.kind == EXACT and inner.host == outer.host
    # outer is *.S: inner *.T is inside when T is S or under S; a name when it is under S.
    if inner.is_ip:
        return False
    if inner.kind == SUFFIX and inner.host == outer.host:
        return True
    return inner.host.endswith("." + outer.host)


def covers(rules: list[HostPattern] | tuple[HostPattern, ...], wanted: HostPattern) -> bool:
    """Is everything `wanted` allows already allowed by `rules` together?"""
    ports: set[int] = set()
    for rule in rules:
        if host_contains(rule, wanted):
            if rule.ports is None:
                return True
            ports |= rule.ports
    return wanted.ports is not None and wanted.ports <= ports


def intersect(a: HostPattern, b: HostPattern) -> HostPattern | None:
    """The pattern allowing exactly what both allow, or None when they share nothing."""
    if a.ports is None:
        ports = b.ports
    elif b.ports is None:
        ports = a.ports
    else:
        ports = a.ports & b.ports
        if not ports:
            return None
    if host_contains(a, b):
        host = b
    elif host_contains(b, a):
        host = a
    else:
        return None
    return HostPattern(host.kind, host.host, ports, host.is_ip)


def _split(text: str) -> tuple[str, str | None, bool]:
    try:
        return hostport.split(text)
    except ValueError as exc:
        raise ValueError(f"`{text}`: {exc}") from None


def split_host_port(text: str, default_port: int = 443) -> tuple[str, int]:
    """`HOST[:PORT]` or `[V6]:PORT` as typed on a command line; raise ValueError if malformed."""
    host, port, bracketed = _split(text)
    if bracketed:
        host = f"[{host}]"
    if port is None:
        return host, default_port
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"`{port}` is not a port number")
    return host, int(port)


def host_text(host: str, port: int | None = None) -> str:
    """`host`, `host:port`, `[v6]:port`: as --allow-host takes it (the web ports need none)."""
    norm = normalize_subject(host)
    name = norm[0] if norm is not None else host
    if port is None or port in WEB_PORTS:
        return name
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def allow_hint(host: str, port: int) -> str:
    """The flag that allows a host the policy does not: `--allow-host HOST[:PORT]`."""
    return f"--allow-host {host_text(host, port)}"
