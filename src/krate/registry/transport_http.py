"""The registry transport's HTTP: a pool of connections to allowed destinations only, and `retry()`.

Part of the transport helper (transport.py), which loads this file by its exact
path when it runs isolated (`python -I -S`, krate not importable); standard library
only. Every connection attempt is reported (host and port only) for krate's egress
ledger; a destination neither the registry nor its announced token service is
refused before any connection is made.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlsplit

from krate.registry.transport_hosts import scheme_port, split_host

MAX_BODY = 4 << 20  # manifests, indexes, tokens and error documents are small
SEND_STEP = 8 << 20  # progress granularity while streaming a blob
BUFFER = 1 << 20
USER_AGENT = "krate-transport/1"
# What OpenSSL says when the other side answered a TLS hello in plain HTTP.
PLAIN_HTTP_REASONS = {
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
}


class Failure(Exception):
    """A problem to report as one line; `code` is a stable word for krate."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Retryable(Exception):
    """A connection error, 429 or 5xx: worth another try after a pause."""


_EMITTING = threading.Lock()  # a pull's download threads report too: one whole line each


def emit(kind: str, **fields) -> None:
    line = json.dumps({"type": kind, **fields}, separators=(",", ":")) + "\n"
    with _EMITTING:
        sys.stdout.write(line)
        sys.stdout.flush()


def destination(netloc: str, scheme: str) -> tuple[str, int]:
    """The host and port a URL names: a Failure, never a crash, when it names none usable."""
    try:
        host, port = split_host(netloc, scheme_port(scheme))
    except ValueError:
        raise Failure("protocol", "the registry named an unusable address (host:port)") from None
    return host, scheme_port(scheme) if port is None else port


def now_ts() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: UP017


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class FileSlice:
    """`length` bytes of a file from `offset`, sent without reading it into memory."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length


class Backoff:
    """How often and how patiently to try again; counts the failures in a row."""

    def __init__(self, retries: int, backoff: float, registry: str) -> None:
        self.retries, self.backoff, self.registry = retries, backoff, registry
        self.failures = 0

    def failed(self, last: str) -> None:
        """Count one failure: pause before the next try, or give up after the last."""
        self.failures += 1
        if self.failures > self.retries:
            raise Failure(
                "unreachable",
                f"registry {self.registry} unreachable after {self.failures} attempts ({last})",
            )
        time.sleep(min(self.backoff * 2 ** (self.failures - 1), 8.0))


def retry(
    attempt: Callable[[], Response | None],
    backoff: Backoff,
    recover: Callable[[], None] | None = None,
) -> Response | None:
    """Call `attempt()` again after connection errors, 429 and 5xx, with backoff.

    `recover()` runs before each new try (a broken upload finds where it stands).
    """
    while True:
        try:
            resp = attempt()
        except Retryable as exc:
            last = str(exc)
        else:
            if resp is None or (resp.status != 429 and resp.status < 500):
                return resp
            last = f"{backoff.registry} answered {resp.status}"
        backoff.failed(last)
        if recover is not None:
            recover()


_warm: list[ssl.SSLContext] = []  # made while the transport waits for its job
_unanchored: list[ssl.SSLContext] = []  # the same, for a loopback registry (warm_loopback)
_warming: list[tuple[threading.Thread, list[ssl.SSLContext]]] = []


def warm(early: tuple[threading.Thread, list[ssl.SSLContext]] | None = None) -> None:
    """Have the TLS context ready before the job: loading the system's CA certificates takes
    some 20 ms. `early` is (thread, list it appends the context to), making it since the
    transport started (transport.py); it is waited for only when a connection needs it."""
    if early is None:
        _warm.append(ssl.create_default_context())
    else:
        _warming.append(early)


def warm_loopback() -> None:
    """For a loopback registry (krate's `--tls-later` hint), what its first connection would
    make after the job arrived, made before: the unanchored context (OpenSSL's first context
    costs about 1.5 ms) and the `idna` codec, which getaddrinfo and the TLS server name load
    on first use (about 2 ms with stringprep). No CA certificates and no connection."""
    import encodings.idna  # noqa: F401

    _unanchored.append(unanchored_context())


def tls_context() -> ssl.SSLContext:
    """The warmed context (once: a job may add its own CA to it), else a new one."""
    while _warming:
        thread, made = _warming.pop()
        thread.join()
        _warm.extend(made)  # empty if it failed: made again here, where an error is reported
    return _warm.pop() if _warm else ssl.create_default_context()


def unanchored_context() -> ssl.SSLContext:
    """`ssl.create_default_context()` without the system's CA certificates (the 20 to 40 ms
    of CPU it spends reading them): the same checks (certificate and host name required,
    the same flags), no trust anchor yet. For the first HTTPS attempt at a loopback
    registry, which mostly answers in plain HTTP: a handshake it fails can only fail
    (`Pool.send` then loads the anchors and tries once more); it never trusts more.
    The one warm_loopback made is used once (a job may add its own CA to it)."""
    if _unanchored:
        return _unanchored.pop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if sys.version_info >= (3, 13):  # as create_default_context() sets them from 3.13
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    return context


class Pool:
    """Connections to the allowed destinations only, reused; counts the bytes sent."""

    def __init__(self, registry: str, scheme: str, job: dict) -> None:
        self.registry = registry
        self.scheme = scheme  # the registry's; becomes "http" after a loopback fallback
        self.host, self.port = destination(registry, scheme)
        self.timeout = float(job.get("timeout", 60))
        self.allowed = {(self.host, self.port)}
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        # A loopback registry that may be plain HTTP is tried over HTTPS first: the system's
        # CA certificates are loaded only if it really speaks TLS (anchor()).
        self.anchored = not job.get("http_fallback")
        self.context = tls_context() if self.anchored else unanchored_context()
        if job.get("ca_file"):
            self.context.load_verify_locations(job["ca_file"])
        self.sent = 0
        self._progress_at = 0.0

    def _conn(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conn = self.conns.get(key)
        if conn is None:
            if (host, port) not in self.allowed:
                emit("egress", host=host, port=port, outcome="refused", at=now_ts())
                raise Failure(
                    "refused_destination",
                    f"the registry sent krate to {host}:{port}, which is neither the registry "
                    f"{self.registry} nor its token service; refused",
                )
            if scheme == "https":
                conn = _ReportingHTTPS(
                    host, port, timeout=self.timeout, context=self.context, blocksize=BUFFER
                )
            else:
                conn = _ReportingHTTP(host, port, timeout=self.timeout, blocksize=BUFFER)
            self.conns[key] = conn
        return conn

    def _drop(self, scheme: str, host: str, port: int) -> None:
        conn = self.conns.pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def anchor(self) -> None:
        """Load the system's CA certificates into the context (the connections made from
        now on use them): it then trusts exactly what create_default_context() trusts."""
        self.context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        self.anchored = True

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def url(self, path: str) -> str:
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{netloc}:{self.port}{path}"

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | FileSlice | None = None,
        auth: str | None = None,
        progress: tuple[str, int, int] | None = None,
        sink: Callable[[http.client.HTTPResponse], None] | None = None,
    ) -> Response:
        """One exchange, no retry. Connection problems raise Retryable.

        With `sink`, a 200 answer's body is not read here: `sink(response)` streams it
        (a blob download), and the Response carries no body.
        """
        parts = urlsplit(url)
        scheme = parts.scheme
        host, port = destination(parts.netloc, scheme)
        if scheme not in ("http", "https"):
            raise Failure("protocol", f"the registry named an unsupported URL scheme {scheme!r}")
        if scheme == "http" and self.scheme == "https":
            raise Failure(
                "protocol", f"the registry {self.registry} sent krate to plain HTTP; refused"
            )
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn = self._conn(scheme, host, port)
        all_headers = {"User-Agent": USER_AGENT, "Host": parts.netloc}
        if auth:
            all_headers["Authorization"] = auth
        all_headers.update(headers or {})
        length = body.length if isinstance(body, FileSlice) else len(body or b"")
        if method in ("POST", "PUT", "PATCH") or length:
            all_headers["Content-Length"] = str(length)
        try:
            resp, data = self._exchange(conn, method, target, all_headers, body, progress, sink)
        except (OSError, http.client.HTTPException, Failure) as exc:
            self._drop(scheme, host, port)
            if isinstance(exc, ssl.SSLCertVerificationError) and not self.anchored:
                # it speaks TLS: verify it as any registry, on a new connection (the
                # failed handshake sent nothing); a second failure is reported as usual
                self.anchor()
                return self.send(
                    method, url, headers=headers, body=body, auth=auth,
                    progress=progress, sink=sink,
                )  # fmt: skip
            raise _explained(exc, host, port) from None
        if resp.will_close:
            self._drop(scheme, host, port)
        return Response(resp.status, resp.headers, data)

    def _exchange(self, conn, method, target, headers, body, progress, sink=None):
        """Send one request, read its answer (bounded, or into `sink`): the response, its body."""
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if isinstance(body, FileSlice):
            self._send_file(conn, body, progress)
        elif body:
            conn.send(body)
        resp = conn.getresponse()
        if sink is not None and resp.status == 200 and method == "GET":
            sink(resp)
            return resp, b""
        data = resp.read(MAX_BODY + 1)  # b"" for HEAD; completes the exchange
        if len(data) > MAX_BODY:
            raise Failure("protocol", f"{conn.host}:{conn.port} sent an oversized answer; refused")
        return resp, data

    def _send_file(self, conn, body: FileSlice, progress) -> None:
        sock = conn.sock
        with open(body.path, "rb", buffering=0) as fh:
            offset, end = body.offset, body.offset + body.length
            if isinstance(sock, ssl.SSLSocket):
                fh.seek(offset)
                buf = bytearray(BUFFER)
                view = memoryview(buf)
                while offset < end:
                    n = fh.readinto(view[: min(BUFFER, end - offset)])
                    if not n:
                        raise Failure("local", f"{body.path} is shorter than recorded")
                    sock.sendall(view[:n])
                    offset += n
                    self._sent(n, progress, offset - body.offset)
            else:
                while offset < end:
                    step = min(SEND_STEP, end - offset)
                    n = sock.sendfile(fh, offset, step)
                    if not n:
                        raise Failure("local", f"{body.path} is shorter than recorded")
                    offset += n
                    self._sent(n, progress, offset - body.offset)

    def _sent(self, n: int, progress, done_in_slice: int) -> None:
        self.sent += n
        if progress is None:
            return
        digest, base, total = progress
        moment = time.monotonic()
        if moment - self._progress_at >= 0.1 or base + done_in_slice >= total:
            self._progress_at = moment
            emit("progress", digest=digest, done=base + done_in_slice, total=total)


def _explained(exc: Exception, host: str, port: int) -> Exception:
    """An exchange's exception as the transport reports it (the connection is dropped)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure("tls", f"TLS certificate of {host}:{port} not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        if exc.reason in PLAIN_HTTP_REASONS:
            return Failure(
                "tls_plain",
                f"{host}:{port} does not speak HTTPS (TLS: {exc.reason}); if it is a plain "
                "HTTP registry you trust, pass --plain-http",
            )
        return Failure("tls", f"TLS with {host}:{port} failed: {exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return Failure("unreachable", f"cannot resolve {host}: {exc.strerror}")
    if isinstance(exc, (OSError, http.client.HTTPException)):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return Retryable(f"{host}:{port}: {reason}")
    return exc


class _Reporting:
    """Reports every connection attempt (host and port only) to krate's egress ledger."""

    def connect(self) -> None:
        try:
            super().connect()
        except OSError:
            emit("egress", host=self.host, port=self.port, outcome="failed", at=now_ts())
            raise
        emit("egress", host=self.host, port=self.port, outcome="connected", at=now_ts())


class _ReportingHTTP(_Reporting, http.client.HTTPConnection):
    pass


class _ReportingHTTPS(_Reporting, http.client.HTTPSConnection):
    pass
