"""The egress proxy: the one process that opens network connections for a sandboxed workload.

Why it exists: a sandboxed workload has an empty network namespace; its only way
out is this proxy, which decides every connection with the policy and reports
each one. It runs as its own small process, started before krate locks itself
out of the network, with an isolated interpreter (`python -I -S proxy.py`):
the standard library and nothing else on its path: no site-packages folder,
ever. The few pure krate policy modules it decides with are named, with their
exact files, in its configuration and loaded from those files only, after every
standard finder (helperlib.py, `Given`). Its ready line reports its path, every module
file it loaded and the modules it was given, for `krate audit network --prove`.

Protocol with the parent (krate):
- stdin: one JSON line of configuration (the compiled allow list and limits);
  afterwards stdin stays open, and its end (krate closed it, or died) means
  "shut down": stop accepting, let open connections finish briefly, exit.
- stdout: JSON lines. First `{"type": "ready", ...}`, then one
  `{"type": "decision", ...}` per connection when it ends (host, port, verdict,
  rule, layer, bytes, duration), last `{"type": "closed", ...}`. The same lines
  go to an inherited journal file descriptor so that a killed krate loses none.

One listener (a Unix socket on Linux, bind-mounted into the sandbox; a loopback
TCP port on macOS) serves HTTP CONNECT, plain HTTP with absolute URIs and
SOCKS5, told apart by the first byte; all three go through `Proxy.open()`.

On Linux the in-sandbox bridge does not relay: it hands each client socket it
accepted over the Unix socket (SCM_RIGHTS, after a NUL byte and `P` or
`F host:port`), so bytes are copied once, here, as on macOS. A handed-over
descriptor must be a TCP socket (it lives in the sandbox's network namespace);
anything else is closed unread. A connection that does not start with the NUL
byte is served as a client itself.

It must never: record or log a URL path, query, header or body; resolve a name
before the decision; dial any address but the one it checked; connect to a
loopback, private, link-local or metadata address unless a rule names that
address (or `localhost`) explicitly; outlive its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

HANDOFF = b"\x00"  # first byte of a bridge's hand-over; no HTTP or SOCKS5 client sends it
READ_CHUNK = 256 * 1024
RELAY_CHUNK = 1024 * 1024
RELAY_WAKE = 2  # seconds a blocked read sleeps before it looks at the idle clock
WRITE_HIGH = 4 * 1024 * 1024
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
HOP_BY_HOP = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
}
# Cloud metadata endpoints that are not covered by "not globally routable".
METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
HOST_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")


@dataclass
class Config:
    rules: list[dict]
    listen: str  # "unix:/path" or "tcp:127.0.0.1:0"
    max_connections: int = 256
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    header_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    shutdown_grace: float = 2.0
    threads: bool = True  # Linux: relay tunnels with two blocking threads instead of asyncio
    journal_fd: int | None = None
    socket_uid: int | None = None  # the sandbox's uid when it is not krate's (a root krate)
    given: dict = field(default_factory=dict)  # krate's policy modules (helperlib.given())
    net_default: tuple[str, str] = ("default: no rule allows it", "builtin:default")

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


@dataclass
class Record:
    """What is reported about one connection: metadata only, never contents."""

    n: int
    protocol: str = "unknown"
    host: str | None = None
    port: int | None = None
    verdict: str = "deny"
    rule: str = ""
    layer: str = ""
    reason: str = ""
    address: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)

    def line(self) -> dict:
        return {
            "type": "decision",
            "n": self.n,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "verdict": self.verdict,
            "rule": self.rule,
            "layer": self.layer,
            "reason": self.reason,
            "address": self.address,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_ms": round((time.monotonic() - self.t0) * 1000, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started))
            + f".{int(self.started % 1 * 1e6):06d}Z",
        }


class Refused(Exception):
    """The connection is not made; `kind` picks the HTTP status / SOCKS reply."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


# ---------------------------------------------------------------- decisions


def load_policy(config: Config):
    """Rebuild the run's network policy from the compiled rules, with the policy's own code.

    Returns `(decide, explicit)`: `decide(host, port) -> (verdict, rule, layer)`
    is `EffectivePolicy.decide_net`, the same function `krate policy explain`
    uses; `explicit(address, port)` says whether some rule names that IP
    address itself (a `localhost` rule names 127.0.0.1 and ::1).
    """
    install_given(config.given)
    from pathlib import Path

    from krate.policy.decide import EffectivePolicy, NetRule
    from krate.policy.hosts import HostPattern
    from krate.policy.model import Limits

    rules = tuple(
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
        for r in config.rules
    )
    policy = EffectivePolicy(
        name="egress",
        hash="",
        workspace=Path("/"),
        deny_read=(),
        allow_write=(),
        read_only=(),
        network_allow=tuple(r.pattern.render() for r in rules),
        env_strip=(),
        env_pass=(),
        limits=Limits(),
        ignored=(),
        net_rules=rules,
        net_default=tuple(config.net_default),
    )
    named = {}
    for r in rules:
        if r.pattern.kind == "exact" and r.pattern.is_ip:
            named.setdefault(r.pattern.host, []).append(r.pattern.ports)

    def decide(host: str, port: int) -> tuple[str, str, str]:
        d = policy.decide_net(host, port)
        return d.verdict, d.rule, d.layer

    def explicit(addr, port: int) -> bool:
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(p is None or port in p for p in named.get(str(addr), ()))

    return decide, explicit


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
    from krate import hostport  # one of the files krate names (helperlib), loaded by now

    host, port_text, _ = hostport.split(text)
    if port_text:
        if not port_text.isdigit():
            raise ValueError("port is not a number")
        port = int(port_text)
    elif default_port is None:
        raise ValueError("port missing")
    else:
        port = default_port
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return normalize_host(host), port


def special(addr) -> bool:
    """Loopback, private, link-local, metadata, multicast or otherwise not global."""
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr in METADATA or addr.is_multicast or not addr.is_global


# ---------------------------------------------------------------- the proxy


class Proxy:
    def __init__(self, config: Config, decide, explicit, emit) -> None:
        self.config = config
        self.decide = decide
        self.explicit = explicit
        self.emit = emit
        self.count = 0
        self.active = 0
        self.tasks: set[asyncio.Task] = set()
        self.loop = asyncio.get_running_loop()

    # -- one client connection

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        forward: tuple[str, int] | None = None,
    ) -> None:
        """One client: HTTP, CONNECT or SOCKS5, or (`forward`) a raw stream to that target."""
        self.count += 1
        self.active += 1
        record = Record(self.count)
        task = asyncio.current_task()
        self.tasks.add(task)
        upstream = None
        try:
            if forward is not None:
                upstream = await self.forwarded(forward, record)
                if upstream is not None:
                    await self.relay(reader, writer, upstream, record)
                return
            first = await asyncio.wait_for(reader.read(1), self.config.header_timeout)
            if not first:
                record.reason = "client closed before a request"
                return
            if first == b"\x05":
                upstream = await self.socks5(reader, writer, record)
            else:
                upstream = await self.http(first, reader, writer, record)
            if upstream is not None:
                await self.relay(reader, writer, upstream, record)
        except TimeoutError:
            record.reason = record.reason or "client sent no complete request in time"
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            record.reason = record.reason or f"client connection failed: {type(exc).__name__}"
        except asyncio.CancelledError:
            record.reason = record.reason or "proxy shut down"
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self.active -= 1
            self.tasks.discard(task)
            self.emit(record.line())

    async def forwarded(self, target: tuple[str, int], record: Record):
        """A host-loopback port the bridge serves at its own address: the client speaks no
        proxy protocol, so a refusal can only close the connection (it is recorded)."""
        record.protocol = "forward"
        try:
            return await self.open(*target, record)
        except Refused as refused:
            record.reason = refused.reason
            return None

    # -- the Unix socket (Linux): clients handed over by the in-sandbox bridge

    async def accept_unix(self, listener: socket.socket) -> None:
        while True:
            conn, _ = await self.loop.sock_accept(listener)
            task = asyncio.ensure_future(self.take(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def take(self, conn: socket.socket) -> None:
        """Serve a connection on the Unix socket: a handed-over client, or the caller itself."""
        forward = None
        try:
            await asyncio.wait_for(self.readable(conn), self.config.header_timeout)
            if conn.recv(1, socket.MSG_PEEK) == HANDOFF:
                conn, forward = self.handed_over(conn)
        except (TimeoutError, OSError, ValueError):
            conn.close()
            return
        reader, writer = await asyncio.open_connection(
            sock=conn, limit=self.config.max_header_bytes
        )
        await self.handle(reader, writer, forward)

    async def readable(self, sock: socket.socket) -> None:
        ready = self.loop.create_future()
        self.loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            self.loop.remove_reader(sock.fileno())

    def handed_over(self, conn: socket.socket) -> tuple[socket.socket, tuple[str, int] | None]:
        """The client socket in a bridge's hand-over, and the forwarded target if any.

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
        if text.startswith("F "):
            try:
                return client, split_hostport(text[2:], None)
            except ValueError:
                pass
        client.close()
        raise ValueError("malformed hand-over")

    async def open(self, host: str, port: int, record: Record):
        """Decide, resolve, check the addresses and dial exactly a checked one."""
        record.host, record.port = host, port
        if self.active > self.config.max_connections:
            record.rule, record.layer = "connection cap", "proxy"
            raise Refused(
                "busy", f"too many concurrent connections (cap {self.config.max_connections})"
            )
        verdict, rule, layer = self.decide(host, port)
        record.verdict, record.rule, record.layer = verdict, rule, layer
        if verdict != "allow":
            raise Refused("denied", f"{host}:{port} is not allowed by the policy")
        try:
            infos = await asyncio.wait_for(
                self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                self.config.connect_timeout,
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
            record.verdict = "deny"
            raise Refused(
                "denied",
                f"{host} resolves to {', '.join(refused)} (loopback, private, link-local or "
                f"metadata) and no rule names that address; allow localhost:{port} or "
                f"the address explicitly if this is intended",
            )
        last = None
        for family, proto, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    self.loop.sock_connect(sock, sockaddr), self.config.connect_timeout
                )
            except TimeoutError:
                sock.close()
                last = Refused("timeout", f"connecting to {host}:{port} timed out")
                continue
            except OSError as exc:
                sock.close()
                last = Refused("refused", f"connecting to {host}:{port} failed: {exc.strerror}")
                continue
            record.address = sockaddr[0]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return await asyncio.open_connection(sock=sock, limit=self.config.max_header_bytes)
        raise last

    # -- SOCKS5 (RFC 1928), CONNECT only, no authentication

    async def socks5(self, reader, writer, record: Record):
        record.protocol = "socks5"
        timeout = self.config.header_timeout
        (nmethods,) = await asyncio.wait_for(reader.readexactly(1), timeout)
        methods = await asyncio.wait_for(reader.readexactly(nmethods), timeout)
        if 0 not in methods:
            writer.write(b"\x05\xff")
            record.reason = "SOCKS client offered no acceptable authentication method"
            return None
        writer.write(b"\x05\x00")
        ver, cmd, _rsv, atyp = await asyncio.wait_for(reader.readexactly(4), timeout)
        if ver != 5:
            record.reason = "malformed SOCKS request"
            return None
        try:
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            elif atyp == 3:
                (length,) = await reader.readexactly(1)
                host = (await reader.readexactly(length)).decode("ascii")
            else:
                await self.socks_reply(writer, "atyp")
                record.reason = "unsupported SOCKS address type"
                return None
            port = int.from_bytes(await reader.readexactly(2), "big")
            host = normalize_host(host)
            if not 0 < port < 65536:
                raise ValueError("port out of range")
        except (ValueError, UnicodeError):
            await self.socks_reply(writer, "failure")
            record.reason = "malformed SOCKS destination"
            return None
        record.host, record.port = host, port
        if cmd != 1:
            await self.socks_reply(writer, "command")
            record.reason = "only the SOCKS CONNECT command is supported"
            return None
        try:
            upstream = await self.open(host, port, record)
        except Refused as refused:
            record.reason = refused.reason
            await self.socks_reply(writer, refused.kind)
            return None
        await self.socks_reply(writer, "ok")
        return upstream

    async def socks_reply(self, writer, kind: str) -> None:
        code = SOCKS_REPLY.get(kind, 2 if kind == "busy" else 1)
        writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    # -- HTTP: CONNECT and absolute-URI requests

    async def http(self, first: bytes, reader, writer, record: Record):
        record.protocol = "http"
        try:
            head = first + await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self.config.header_timeout
            )
        except asyncio.LimitOverrunError:
            record.reason = f"request header over {self.config.max_header_bytes} bytes"
            await self.http_error(writer, 431, "Request Header Fields Too Large", record.reason)
            return None
        except asyncio.IncompleteReadError:
            record.reason = "incomplete request header"
            return None
        if len(head) > self.config.max_header_bytes:
            record.reason = f"request header over {self.config.max_header_bytes} bytes"
            await self.http_error(writer, 431, "Request Header Fields Too Large", record.reason)
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            record.reason = "malformed request line"
            await self.http_error(writer, 400, "Bad Request", record.reason)
            return None
        method, target, version = parts
        if method == "CONNECT":
            record.protocol = "connect"
            try:
                host, port = split_hostport(target, None)
            except ValueError as exc:
                record.reason = f"bad CONNECT target: {exc}"
                await self.http_error(writer, 400, "Bad Request", record.reason)
                return None
            upstream = await self.http_open(host, port, writer, record)
            if upstream is not None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return upstream
        from urllib.parse import urlsplit

        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc:
            record.reason = "not an absolute http:// URI (use CONNECT for https)"
            await self.http_error(writer, 400, "Bad Request", record.reason)
            return None
        try:
            host, port = split_hostport(url.netloc.rpartition("@")[2], 80)
        except ValueError as exc:
            record.reason = f"bad URI authority: {exc}"
            await self.http_error(writer, 400, "Bad Request", record.reason)
            return None
        upstream = await self.http_open(host, port, writer, record)
        if upstream is None:
            return None
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = [h for h in lines[1:] if h]
        tokens = set()
        kept = []
        for h in headers:
            name, _, value = h.partition(":")
            lname = name.strip().lower()
            if lname == "connection":
                tokens |= {t.strip().lower() for t in value.split(",")}
            if lname not in HOP_BY_HOP:
                kept.append(h)
        authority = url.netloc.rpartition("@")[2]
        upgrade = "upgrade" in tokens and any(h.lower().startswith("upgrade:") for h in kept)
        out = [f"{method} {path} {version}", f"Host: {authority}", *kept]
        out.append("Connection: Upgrade" if upgrade else "Connection: close")
        upstream[1].write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        record.bytes_up += len(head)  # the request head as the workload sent it
        return (upstream[0], upstream[1], "rewrite-response")

    async def http_open(self, host, port, writer, record: Record):
        try:
            return await self.open(host, port, record)
        except Refused as refused:
            record.reason = refused.reason
            status = {
                "denied": (403, "Forbidden"),
                "busy": (503, "Service Unavailable"),
                "timeout": (504, "Gateway Timeout"),
            }.get(refused.kind, (502, "Bad Gateway"))
            body = refused.reason
            if refused.kind == "denied":
                body = (
                    f"krate: {refused.reason} (rule: {record.rule or 'none'}, "
                    f"layer: {record.layer or 'none'}).\n"
                    f"To allow it: krate run --allow-host {host}:{port} -- ...\n"
                )
            await self.http_error(writer, *status, body)
            return None

    async def http_error(self, writer, status: int, text: str, body: str) -> None:
        data = (body.rstrip("\n") + "\n").encode()
        writer.write(
            f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nX-Krate-Decision: deny\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def rewrite_response(self, up_reader, writer) -> int:
        """Make the first final response head say `Connection: close` (one request per tunnel)."""
        sent = 0
        while True:
            head = await up_reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")
            code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
            if 100 <= code < 200 and code != 101:
                writer.write(head)
                sent += len(head)
                continue
            if code == 101:
                out = head
            else:
                kept = [
                    h
                    for h in lines[1:]
                    if h and h.partition(":")[0].strip().lower() not in HOP_BY_HOP - {"host"}
                ]
                out = ("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode(
                    "latin-1"
                )
            writer.write(out)
            return sent + len(head)

    # -- relaying bytes both ways, with half-close and an idle timeout

    async def relay(self, reader, writer, upstream, record: Record) -> None:
        if len(upstream) == 2:
            await self.tunnel(reader, writer, upstream, record)
        else:
            await self.relay_streams(reader, writer, upstream, record)

    async def tunnel(self, reader, writer, upstream, record: Record) -> None:
        """CONNECT and SOCKS: bytes move without a coroutine per chunk (threads or `Pipe`)."""
        if self.config.threads and sys.platform.startswith("linux"):
            return await self.tunnel_threads(reader, writer, upstream, record)
        tunnel = Tunnel(record, self.loop)
        client, server = writer.transport, upstream[1].transport
        tunnel.transports = (client, server)
        Pipe(tunnel, True, server).attach(client, reader)
        Pipe(tunnel, False, client).attach(server, upstream[0])
        idle = self.config.idle_timeout
        while not tunnel.done.done():
            wait = max(0.05, tunnel.last + idle - time.monotonic())
            await asyncio.wait([tunnel.done], timeout=wait)
            if not tunnel.done.done() and time.monotonic() - tunnel.last >= idle:
                record.reason = f"idle for {idle:g} s"
                tunnel.finish()
        # Let the last buffered bytes leave before the handler closes the writers.
        for transport in (client, server):
            while transport.get_write_buffer_size() and not transport.is_closing():
                await asyncio.sleep(0.01)

    async def tunnel_threads(self, reader, writer, upstream, record: Record) -> None:
        """Linux: take both sockets out of asyncio; two blocking threads copy them."""
        for w in (writer, upstream[1]):
            while w.transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
        fds, leftovers = [], []
        for r, w in ((reader, writer), (upstream[0], upstream[1])):
            leftovers.append((bytes(r._buffer), r._eof))
            fd = os.dup(w.get_extra_info("socket").fileno())
            os.set_blocking(fd, True)
            fds.append(fd)
            w.transport.abort()  # closes asyncio's descriptor; the connection lives on in `fd`
        client, server = fds
        timeout = struct.pack("ll", int(RELAY_WAKE), 0)
        for fd in fds:
            sock = socket.socket(fileno=os.dup(fd))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
            sock.close()
        state = SpliceState(record, self.config.idle_timeout)
        done = self.loop.create_future()
        finished = [0]

        def one_done() -> None:
            finished[0] += 1
            if finished[0] == 2 and not done.done():
                done.set_result(None)

        def run(src: int, dst: int, up: bool, leftover: bytes, eof: bool) -> None:
            try:
                state.move(src, dst, up, leftover, eof)
            finally:
                self.loop.call_soon_threadsafe(one_done)

        threads = [
            threading.Thread(target=run, args=(client, server, True, *leftovers[0]), daemon=True),
            threading.Thread(target=run, args=(server, client, False, *leftovers[1]), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            state.stop(fds)
            await done
            raise
        finally:
            for fd in fds:
                os.close(fd)

    async def relay_streams(self, reader, writer, upstream, record: Record) -> None:
        """Plain HTTP: coroutines, so the first response head can be rewritten on the way."""
        up_reader, up_writer = upstream[0], upstream[1]
        last = [time.monotonic()]

        async def pipe(src, dst, up: bool) -> None:
            try:
                while data := await src.read(READ_CHUNK):
                    last[0] = time.monotonic()
                    if up:
                        record.bytes_up += len(data)
                    else:
                        record.bytes_down += len(data)
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.close()

        async def down() -> None:
            if len(upstream) == 3:
                record.bytes_down += await self.rewrite_response(up_reader, writer)
            await pipe(up_reader, writer, False)

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer, True)),
            asyncio.ensure_future(down()),
        ]
        idle = self.config.idle_timeout
        try:
            while True:
                wait = max(0.05, last[0] + idle - time.monotonic())
                done, _ = await asyncio.wait(tasks, timeout=min(wait, idle))
                if all(t.done() for t in tasks):
                    break
                if time.monotonic() - last[0] >= idle:
                    record.reason = f"idle for {idle:g} s"
                    break
                if tasks[1].done():
                    # The server finished; give the client its own idle time to finish too.
                    continue
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            exc = t.exception() if not t.cancelled() else None
            if isinstance(exc, asyncio.LimitOverrunError | asyncio.IncompleteReadError):
                record.reason = "malformed response head from the server"


class SpliceState:
    """Shared by the two relay threads of one tunnel: byte counts, idle clock, stop flag."""

    def __init__(self, record: Record, idle: float) -> None:
        self.record, self.idle = record, idle
        self.last = time.monotonic()
        self.stopped = False
        self.lock = threading.Lock()

    def stop(self, fds) -> None:
        self.stopped = True
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)

    def move(self, src: int, dst: int, up: bool, leftover: bytes, eof: bool) -> None:
        """Copy src to dst until EOF (then half-close dst), an error, idleness or stop.

        Plain reads and writes with a large buffer: measured here, faster than splice()
        through a pipe (bench/bench_egress.py: 0.38 of direct against 0.32).
        """
        buffer = bytearray(RELAY_CHUNK)
        view = memoryview(buffer)
        try:
            if leftover:
                self.count(up, len(leftover))
                rest = memoryview(leftover)
                while rest:
                    rest = rest[os.write(dst, rest) :]
            while not eof and not self.stopped:
                try:
                    n = os.readv(src, [buffer])
                except BlockingIOError:  # SO_RCVTIMEO woke us: check the idle clock
                    if time.monotonic() - self.last >= self.idle:
                        self.record.reason = f"idle for {self.idle:g} s"
                        self.stop((src, dst))
                    continue
                if n == 0:
                    break
                self.count(up, n)
                sent = 0
                while sent < n:
                    try:
                        sent += os.write(dst, view[sent:n])
                    except BlockingIOError:
                        if self.stopped or time.monotonic() - self.last >= self.idle:
                            raise
            if not self.stopped:
                with contextlib.suppress(OSError):
                    socket.socket(fileno=os.dup(dst)).shutdown(socket.SHUT_WR)
                return
        except OSError:
            self.stop((src, dst))

    def count(self, up: bool, n: int) -> None:
        with self.lock:
            self.last = time.monotonic()
            if up:
                self.record.bytes_up += n
            else:
                self.record.bytes_down += n


class Tunnel:
    """Both directions of one relayed connection; `done` resolves when both have ended."""

    def __init__(self, record: Record, loop) -> None:
        self.record = record
        self.done = loop.create_future()
        self.last = time.monotonic()
        self.eofs = 0
        self.transports: tuple = ()

    def half_closed(self) -> None:
        self.eofs += 1
        if self.eofs == 2:
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        for transport in self.transports:
            transport.close()  # sends what is still buffered, then closes


class Pipe(asyncio.Protocol):
    """Moves bytes from the transport it is attached to into `dst`, with flow control."""

    def __init__(self, tunnel: Tunnel, up: bool, dst) -> None:
        self.tunnel, self.up, self.dst = tunnel, up, dst

    def attach(self, transport, reader: asyncio.StreamReader) -> None:
        """Take over `transport` from its StreamReader, passing on what it had buffered."""
        leftover, eof = bytes(reader._buffer), reader._eof
        reader._buffer.clear()
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        if leftover:
            self.data_received(leftover)
        if eof:
            self.eof_received()
        elif not transport.is_closing():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.tunnel.last = time.monotonic()
        if self.up:
            self.tunnel.record.bytes_up += len(data)
        else:
            self.tunnel.record.bytes_down += len(data)
        self.dst.write(data)

    def eof_received(self) -> bool:
        if self.dst.can_write_eof() and not self.dst.is_closing():
            self.dst.write_eof()  # half-close: the other direction keeps flowing
        self.tunnel.half_closed()
        return True

    def connection_lost(self, exc) -> None:
        self.tunnel.finish()

    # Our transport's write buffer is full: stop reading from the transport feeding it.
    def pause_writing(self) -> None:
        self.dst.pause_reading()

    def resume_writing(self) -> None:
        if not self.dst.is_closing():
            self.dst.resume_reading()


# ---------------------------------------------------------------- process


class Emitter:
    """Writes decision lines to stdout (the parent) and the journal (crash safety)."""

    def __init__(self, journal_fd: int | None) -> None:
        self.journal_fd = journal_fd
        self.stdout_ok = True

    def __call__(self, line: dict) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        if self.journal_fd is not None and line.get("type") == "decision":
            with contextlib.suppress(OSError):
                os.write(self.journal_fd, data)
        if self.stdout_ok:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]
            except OSError:
                self.stdout_ok = False  # the parent is gone; the journal keeps the record


def read_config_line() -> str:
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks).decode()


class UnixServer:
    """The Unix listener's accept loop, closed like an asyncio Server."""

    def __init__(self, listener: socket.socket, accepting: asyncio.Future) -> None:
        self.listener, self.accepting = listener, accepting

    def close(self) -> None:
        self.accepting.cancel()
        self.listener.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.accepting


async def serve(config: Config, decide, explicit, emit: Emitter) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    proxy = Proxy(config, decide, explicit, emit)
    kind, _, where = config.listen.partition(":")
    if kind == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Made under another name and renamed once it has its owner: the bridge, waiting
        # for the name, never finds a socket it may not connect to yet.
        making = where + ".new"
        listener.bind(making)
        os.chmod(making, 0o600)
        if config.socket_uid is not None:
            os.chown(making, config.socket_uid, -1)
        listener.listen(512)
        os.rename(making, where)
        listener.setblocking(False)
        server = UnixServer(listener, asyncio.ensure_future(proxy.accept_unix(listener)))
        address: object = where
    else:
        host, _, port = where.rpartition(":")
        server = await asyncio.start_server(
            proxy.handle, host, int(port), limit=config.max_header_bytes, backlog=512
        )
        address = server.sockets[0].getsockname()[1]
    for sig in (signal.SIGTERM,):
        loop.add_signal_handler(sig, stop.set)

    # stdin closing (krate finished, or died) is the signal to shut down.
    class Watch(asyncio.Protocol):
        def connection_lost(self, exc) -> None:
            stop.set()

        def eof_received(self) -> None:
            stop.set()

    await loop.connect_read_pipe(Watch, os.fdopen(0, "rb", buffering=0))
    emit(
        {
            "type": "ready",
            "listen": config.listen,
            "port": address,
            "pid": os.getpid(),
            "python": import_report(),
        }
    )
    await stop.wait()
    server.close()
    if proxy.tasks:
        await asyncio.wait(list(proxy.tasks), timeout=config.shutdown_grace)
    for task in list(proxy.tasks):
        task.cancel()
    if proxy.tasks:
        await asyncio.wait(list(proxy.tasks), timeout=1.0)
    await server.wait_closed()
    if kind == "unix":
        # The folder is this run's alone (socket and bridge copy): leave nothing behind,
        # even when krate itself was killed.
        folder = os.path.dirname(where)
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.rmdir(folder)
    emit({"type": "closed", "connections": proxy.count})


class Given:
    """Finds the modules krate named, by exact name and file, after every standard finder."""

    def __init__(self, modules: dict) -> None:
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        entry = self.modules.get(name)
        if entry is None:
            return None
        if entry.get("package"):  # an empty package: only the named submodules below it
            from importlib.machinery import ModuleSpec

            spec = ModuleSpec(name, self, origin="krate", is_package=True)
            spec.submodule_search_locations = []
            return spec
        from importlib.util import spec_from_file_location

        return spec_from_file_location(name, entry["file"])  # uses its cached bytecode

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        pass  # the empty packages


def install_given(modules: dict) -> None:
    if modules:
        sys.meta_path.append(Given(modules))  # last: a standard name always wins


def import_report() -> dict:
    """What this process can import and what it did: its sys.path and its loaded modules' files.

    (The transport has the same few lines: neither helper may import the other.)
    """
    loaded = list(sys.modules.values())
    files = {getattr(m, "__file__", None) for m in loaded}
    given = sorted(m.__name__ for m in loaded if m.__name__.partition(".")[0] == "krate")
    return {
        "path": list(sys.path),
        "files": sorted(f for f in files if isinstance(f, str)),
        "given": given,
    }


def main() -> int:
    # Ctrl-C reaches the whole process group; the proxy stops only when krate says so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = Config.from_json(read_config_line())
    emit = Emitter(config.journal_fd)
    decide, explicit = load_policy(config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(serve(config, decide, explicit, emit))
    # Every line is written (os.write, unbuffered) and the relay threads are daemons: skip
    # the interpreter's and the executor's teardown, which krate's run would wait for (a
    # name lookup still running in the executor would hold it for its whole timeout).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
