"""What a client asks the egress proxy for: pure parsers, no sockets, no I/O.

Each parser takes the bytes a client sent and returns a `Target` (where to connect,
and what the relay must do) or a `Refusal` (why not, and the bytes to answer with).
The proxy's reading code only frames messages (`*_size`); everything that can be
malformed is decided here, where it is fuzzed (tests/test_egress_parsers.py).
Loaded in the proxy process by exact file (helperlib.py): standard library only,
plus `krate.hostport`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
from urllib.parse import urlsplit

from krate import hostport
from krate.records import NamedTuple

HEAD_END = b"\r\n\r\n"
HOST_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")
HOP_BY_HOP = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
}
SOCKS_REPLY = {  # RFC 1928 reply codes
    "ok": 0,
    "failure": 1,
    "denied": 2,
    "unreachable": 4,
    "refused": 5,
    "timeout": 6,
    "command": 7,
    "atyp": 8,
}
HTTP_STATUS = {
    "denied": (403, "Forbidden"),
    "busy": (503, "Service Unavailable"),
    "timeout": (504, "Gateway Timeout"),
}
CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
SOCKS_ACCEPT, SOCKS_NO_METHOD = b"\x05\x00", b"\x05\xff"
SOCKS_USERPASS = b"\x05\x02"  # RFC 1929: username/password chosen
SOCKS_AUTH_OK, SOCKS_AUTH_FAILED = b"\x01\x00", b"\x01\x01"
USER = "krate"  # the user name in the proxy URL (`http://krate:SECRET@127.0.0.1:PORT`)
UNAUTHENTICATED = "client did not give this run's proxy credential"


class Target(NamedTuple):
    """Connect to host:port; `used` bytes of the input were the request (the rest is data)."""

    protocol: str  # "connect", "http" or "socks5"
    host: str
    port: int
    used: int
    send: bytes = b""  # plain HTTP: the request head to send upstream, rewritten
    rewrite: bool = False  # plain HTTP: the first response head gets `Connection: close`


class Refusal(NamedTuple):
    """No connection: `kind` says why, `reply` is what the client is sent (maybe nothing)."""

    kind: str
    reason: str
    reply: bytes = b""
    host: str | None = None  # when the request named a destination before it failed
    port: int | None = None
    protocol: str | None = None  # when it is known (a CONNECT with a bad target)


class Greeted(NamedTuple):
    """A SOCKS5 greeting (or RFC 1929 sub-negotiation) accepted: answer it, then read on."""

    used: int
    reply: bytes = SOCKS_ACCEPT


# ---------------------------------------------------------------- hosts


def normalize_host(raw: str) -> str:
    """Lower-case, bracket-free, IDNA-encoded host name or IP literal; raise ValueError if odd."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".").lower()
    if not host:
        raise ValueError("empty host")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if not set(host) <= HOST_CHARS or len(host) > 253 or ".." in host:
        raise ValueError(f"invalid host name {raw[:80]!r}")
    return host


def split_hostport(text: str, default_port: int | None) -> tuple[str, int]:
    """(normal host, port) from HOST[:PORT] or [V6][:PORT]; ValueError saying what is wrong."""
    host, port_text, _ = hostport.split(text)
    if not port_text and default_port is None:
        raise ValueError("port missing")
    if port_text and not port_text.isdigit():
        raise ValueError("port is not a number")
    port = int(port_text) if port_text else default_port
    if port is None or not 0 < port < 65536:
        raise ValueError("port out of range")
    return normalize_host(host), port


# ---------------------------------------------------------------- replies


def http_error(status: int, text: str, body: str) -> bytes:
    data = (body.rstrip("\n") + "\n").encode()
    return (
        f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nX-Krate-Decision: deny\r\n"
        f"Connection: close\r\n\r\n".encode()
        + data
    )


def socks_reply(kind: str) -> bytes:
    code = SOCKS_REPLY.get(kind, 2 if kind == "busy" else 1)
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def connected(protocol: str) -> bytes:
    """What the client is told once its destination is connected."""
    return {"connect": CONNECTED, "socks5": socks_reply("ok")}.get(protocol, b"")


def refused(protocol: str, kind: str, reason: str, where: tuple) -> bytes:
    """The answer to a request the dial refused; `where` is (host, port, rule, layer, hint),
    the hint being the `krate run` flag that would allow it."""
    if protocol == "socks5":
        return socks_reply(kind)
    if protocol not in ("http", "connect"):
        return b""  # a forwarded port: the client speaks no proxy protocol
    status = HTTP_STATUS.get(kind, (502, "Bad Gateway"))
    body = reason
    if kind == "denied":
        _host, _port, rule, layer, *rest = where
        hint = rest[0] if rest else ""
        reason = reason.split("; to allow it:")[0]
        body = f"krate: {reason} (rule: {rule or 'none'}, layer: {layer or 'none'}).\n"
        if hint:  # the flag that allows it (none for input that is not a host)
            body += f"To allow it: krate run {hint} -- ...\n"
    return http_error(*status, body)


# ---------------------------------------------------------------- the run's credential


def same_secret(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison (the secret must not leak through timing)."""
    import hmac  # only the loopback listener asks: the bridge's proxy never pays its import

    return hmac.compare_digest(given, expected)


def credential_ok(value: str | None, secret: str) -> bool:
    """Whether a Proxy-Authorization value is `Basic base64(krate:SECRET)` for this secret."""
    scheme, _, token = (value or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return same_secret(given, f"{USER}:{secret}".encode())


def unauthenticated(protocol: str, target: Target | None = None, reply: bytes = b"") -> Refusal:
    """The refusal of a client without this run's credential: 407 (HTTP), or `reply` (SOCKS)."""
    if protocol != "socks5":
        body = (UNAUTHENTICATED + "\n").encode()
        reply = (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="krate"\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"X-Krate-Decision: deny\r\nConnection: close\r\n\r\n"
            + body
        )
    host, port = (target.host, target.port) if target is not None else (None, None)
    return Refusal("unauthenticated", UNAUTHENTICATED, reply, host, port, protocol)


def header(lines: list[str], name: str) -> str | None:
    """The first value of header `name` (lower case) among a head's lines."""
    for line in lines:
        field, sep, value = line.partition(":")
        if sep and field.strip().lower() == name:
            return value
    return None


# ---------------------------------------------------------------- HTTP


def http_head_size(data: bytes, limit: int) -> int | None:
    """The head's length once complete, 0 when over `limit`, None while more may come."""
    end = data.find(HEAD_END)
    if end >= 0:
        return end + len(HEAD_END) if end + len(HEAD_END) <= limit else 0
    return 0 if len(data) > limit else None


def bad_request(reason: str, protocol: str | None = None) -> Refusal:
    reply = http_error(400, "Bad Request", reason)
    return Refusal("bad-request", reason, reply, protocol=protocol)


def http_request(data: bytes, limit: int, secret: str | None = None) -> Target | Refusal:
    """A CONNECT or absolute-URI request from the bytes a client sent (all of them, at EOF).

    With a `secret` (the loopback listener), a request without `Proxy-Authorization:
    Basic base64(krate:SECRET)` is refused (407); the header is never sent upstream.
    """
    target = parse_http(data, limit)
    if secret is None or not isinstance(target, Target):
        return target
    size = target.used
    lines = data[:size].decode("latin-1").split("\r\n")[1:]
    if not credential_ok(header(lines, "proxy-authorization"), secret):
        return unauthenticated(target.protocol, target)
    return target


def parse_http(data: bytes, limit: int) -> Target | Refusal:
    size = http_head_size(data, limit)
    if size == 0:
        reason = f"request header over {limit} bytes"
        return Refusal(
            "too-large", reason, http_error(431, "Request Header Fields Too Large", reason)
        )
    if size is None:
        return Refusal("incomplete", "incomplete request header")
    lines = data[:size].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return bad_request("malformed request line")
    method, target, version = parts
    if method == "CONNECT":
        try:
            host, port = split_hostport(target, None)
        except ValueError as exc:
            return bad_request(f"bad CONNECT target: {exc}", "connect")
        return Target("connect", host, port, size)
    url = urlsplit_or_none(target)
    if url is None or url.scheme.lower() != "http" or not url.netloc:
        return bad_request("not an absolute http:// URI (use CONNECT for https)")
    authority = url.netloc.rpartition("@")[2]
    try:
        host, port = split_hostport(authority, 80)
    except ValueError as exc:
        return bad_request(f"bad URI authority: {exc}")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    head = rewrite_request(f"{method} {path} {version}", authority, lines[1:])
    return Target("http", host, port, size, head, rewrite=True)


def urlsplit_or_none(target: str):
    try:
        return urlsplit(target)
    except ValueError:  # e.g. an unbalanced `[` in the authority
        return None


def rewrite_request(line: str, authority: str, headers: list[str]) -> bytes:
    """The head sent upstream: origin-form, our Host, no hop-by-hop fields, one request."""
    tokens = set()
    kept = []
    for h in headers:
        if not h:
            continue
        name, _, value = h.partition(":")
        lname = name.strip().lower()
        if lname == "connection":
            tokens |= {t.strip().lower() for t in value.split(",")}
        if lname not in HOP_BY_HOP:
            kept.append(h)
    upgrade = "upgrade" in tokens and any(h.lower().startswith("upgrade:") for h in kept)
    out = [line, f"Host: {authority}", *kept]
    out.append("Connection: Upgrade" if upgrade else "Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def response_head(head: bytes) -> tuple[bytes, bool]:
    """(what to send the client, whether it was the final head) for one response head.

    The first final head says `Connection: close` (one request per connection); an
    interim 1xx head passes unchanged, and so does a 101 (the protocol switches).
    """
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")
    code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
    if 100 <= code < 200:
        return head, code == 101
    kept = [
        h
        for h in lines[1:]
        if h and h.partition(":")[0].strip().lower() not in HOP_BY_HOP - {"host"}
    ]
    return ("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode(
        "latin-1"
    ), True


# ---------------------------------------------------------------- SOCKS5 (RFC 1928)


def socks_greeting_size(data: bytes) -> int:
    """Bytes the greeting (VER NMETHODS METHODS...) needs, given what has come so far."""
    return 2 if len(data) < 2 else 2 + data[1]


def socks_greeting(data: bytes, userpass: bool = False) -> Greeted | Refusal:
    """The greeting must offer method 0 (no authentication), or with `userpass` (the
    loopback listener) method 2 (RFC 1929 username/password) and nothing else will do."""
    size = socks_greeting_size(data)
    if len(data) < size or data[0] != 5:
        return Refusal("incomplete", "incomplete SOCKS greeting")
    if userpass:
        if 2 not in data[2:size]:
            return unauthenticated("socks5", reply=SOCKS_NO_METHOD)
        return Greeted(size, SOCKS_USERPASS)
    if 0 not in data[2:size]:
        reason = "SOCKS client offered no acceptable authentication method"
        return Refusal("auth", reason, SOCKS_NO_METHOD)
    return Greeted(size)


def socks_auth_size(data: bytes) -> int:
    """Bytes the RFC 1929 request (VER ULEN UNAME PLEN PASSWD) needs, given what came."""
    if len(data) < 2:
        return 2
    if len(data) < 3 + data[1]:
        return 3 + data[1]
    return 3 + data[1] + data[2 + data[1]]


def socks_auth(data: bytes, secret: str) -> Greeted | Refusal:
    """The RFC 1929 sub-negotiation: user `krate` and this run's secret, else refused."""
    size = socks_auth_size(data)
    if len(data) < size or data[0] != 1:
        return unauthenticated("socks5", reply=SOCKS_AUTH_FAILED)
    ulen = data[1]
    user_ok = same_secret(data[2 : 2 + ulen], USER.encode())
    if not (same_secret(data[3 + ulen : size], secret.encode()) and user_ok):
        return unauthenticated("socks5", reply=SOCKS_AUTH_FAILED)
    return Greeted(size, SOCKS_AUTH_OK)


def socks_request_size(data: bytes) -> int:
    """Bytes the request (VER CMD RSV ATYP ADDR PORT) needs, given what has come so far.

    A wrong version or address type is answered after the first four bytes."""
    if len(data) < 4 or data[0] != 5 or data[3] not in (1, 3, 4):
        return 4
    if data[3] == 3:
        return 5 if len(data) < 5 else 4 + 1 + data[4] + 2
    return 4 + (4 if data[3] == 1 else 16) + 2


def socks_request(data: bytes) -> Target | Refusal:
    """The destination of a SOCKS5 request (the bytes after the greeting)."""
    if len(data) < 4:
        return Refusal("incomplete", "incomplete SOCKS request")
    ver, cmd, _rsv, atyp = data[:4]
    if ver != 5:
        return Refusal("malformed", "malformed SOCKS request")
    if atyp not in (1, 3, 4):
        return Refusal("atyp", "unsupported SOCKS address type", socks_reply("atyp"))
    size = socks_request_size(data)
    if len(data) < size:
        return Refusal("incomplete", "incomplete SOCKS request")
    raw = data[5 : size - 2] if atyp == 3 else data[4 : size - 2]
    port = int.from_bytes(data[size - 2 : size], "big")
    try:
        host = normalize_host(raw.decode("ascii")) if atyp == 3 else str(ipaddress.ip_address(raw))
        if not 0 < port < 65536:
            raise ValueError("port out of range")
    except (ValueError, UnicodeError):
        return Refusal("malformed", "malformed SOCKS destination", socks_reply("failure"))
    if cmd != 1:
        reason = "only the SOCKS CONNECT command is supported"
        return Refusal("command", reason, socks_reply("command"), host, port)
    return Target("socks5", host, port, size)


class ResponseHeads:
    """Plain HTTP, server to client: holds bytes back until the first final response head,
    which goes out rewritten (`response_head`); everything after it passes unchanged."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = b""
        self.done = False

    def __call__(self, data) -> bytes:
        """What to send the client for `data`; ValueError for a head over the limit."""
        if self.done:
            return data
        self.held += data
        out = b""
        while not self.done:
            end = self.held.find(HEAD_END)
            if end < 0:
                if len(self.held) > self.limit:
                    raise ValueError("response head too long")
                return out
            head, self.held = self.held[: end + len(HEAD_END)], self.held[end + len(HEAD_END) :]
            sent, self.done = response_head(head)
            out += sent
        out, self.held = out + self.held, b""
        return out
