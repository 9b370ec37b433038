"""krate's registry transport: the only code of krate that opens a network connection.

Started by `krate login` / `krate push` as its own process, before krate locks
itself out of IP sockets (and before krate loads any third-party package), with
an isolated interpreter (`python -I -S transport.py`: no site-packages, no .pth
files, no PYTHON* variables, not even this folder), so no third-party code and no
file planted next to krate ever runs with network access. Standard library only;
it cannot import krate. The job `{"op": "report"}` answers with its sys.path and
loaded module files (`krate audit network --prove` checks them).

Input: one JSON job on stdin (credentials included: never argv, never the
environment), read to EOF. Output: JSON lines on stdout, for krate to record and
show: `egress` (host and port of every connection it opens, the format of
krate.netguard.ledger.report_line), `progress`, `blob`, `manifest`, `referrers`,
`auth`, then `done` or `error` (one line a person can act on; exit status 1).

It speaks the OCI distribution push sequence (see docs/push.md): `GET /v2/` and
the Basic or Bearer challenge that answers it; per blob `HEAD` (skip when
present), `POST` an upload, then one `PUT` (small blobs) or `PATCH` chunks and a
closing `PUT`, streamed from the file in bounded memory; manifests; and the
referrers API or, where the registry lacks it, the `sha256-<hex>` referrers tag.
Connection errors, 429 and 5xx are retried with backoff; a broken chunked upload
resumes from the offset the registry reports.

It must never: connect anywhere but the registry of the job and the token realm
that registry announces; send credentials to any other host or over plain HTTP to
a host the job did not allow; follow a redirect carrying Authorization; put a
credential, URL path or response body in its output.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import sys
import time
from datetime import datetime, timezone
from urllib.parse import quote, urlencode, urljoin, urlsplit

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = f"{MANIFEST}, {INDEX}"
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


def emit(kind: str, **fields) -> None:
    fields = {"type": kind, **fields}
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def now_ts() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: UP017


def split_host(netloc: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host.lower(), int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit():
        return host.lower(), int(port)
    return netloc.lower(), default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y",scope="a,b"` -> ("bearer", {...}); quoted commas kept."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def registry_error(body: bytes) -> str:
    """The registry's own error code and message (`NAME_UNKNOWN: ...`), short; never the body."""
    try:
        errors = json.loads(body)["errors"]
        first = errors[0]
        code = str(first.get("code", ""))[:40]
        message = str(first.get("message", ""))[:120]
        return f"{code}: {message}" if message else code
    except Exception:
        return ""


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


class Client:
    """HTTP to one registry (and its token realm), with auth, retries and an egress report."""

    def __init__(self, job: dict) -> None:
        self.scheme = job["scheme"]
        self.registry = job["registry"]
        self.host, self.port = split_host(self.registry, self.scheme)
        self.username = job.get("username")
        self.password = job.get("password")
        self.timeout = float(job.get("timeout", 60))
        self.retries = int(job.get("retries", 4))
        self.backoff = float(job.get("backoff", 0.5))
        self.allowed = {(self.host, self.port)}
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self.auth_scheme = "none"
        self.realm: tuple[str, str, int, str] | None = None  # scheme, host, port, url
        self.service: str | None = None
        self.tokens: dict[str, str] = {}
        self.token: str | None = None
        self.asked_scopes: set[str | None] = set()
        self.renewals = 0
        self.scope: str | None = None
        self.context = ssl.create_default_context()
        if job.get("ca_file"):
            self.context.load_verify_locations(job["ca_file"])
        self.fallback = bool(job.get("http_fallback"))
        self.sent = 0
        self._progress_at = 0.0

    # -- connections -------------------------------------------------------------

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

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    # -- one request -------------------------------------------------------------

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
    ) -> Response:
        """One exchange, no retry. Connection problems raise Retryable."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host, port = split_host(parts.netloc, scheme)
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
        if body is None:
            length = 0
        elif isinstance(body, FileSlice):
            length = body.length
        else:
            length = len(body)
        if method in ("POST", "PUT", "PATCH") or length:
            all_headers["Content-Length"] = str(length)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in all_headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            if isinstance(body, FileSlice):
                self._send_file(conn, body, progress)
            elif body:
                conn.send(body)
            resp = conn.getresponse()
            data = resp.read(MAX_BODY + 1)  # b"" for HEAD; completes the exchange
            if len(data) > MAX_BODY:
                raise Failure("protocol", f"{host}:{port} sent an oversized answer; refused")
            if resp.will_close:
                self._drop(scheme, host, port)
            return Response(resp.status, resp.headers, data)
        except ssl.SSLCertVerificationError as exc:
            self._drop(scheme, host, port)
            raise Failure(
                "tls", f"TLS certificate of {host}:{port} not trusted: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            self._drop(scheme, host, port)
            if exc.reason in PLAIN_HTTP_REASONS:
                raise Failure(
                    "tls_plain",
                    f"{host}:{port} does not speak HTTPS (TLS: {exc.reason}); if it is a plain "
                    "HTTP registry you trust, pass --plain-http",
                ) from None
            raise Failure("tls", f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
        except Failure:
            self._drop(scheme, host, port)
            raise
        except socket.gaierror as exc:
            self._drop(scheme, host, port)
            raise Failure("unreachable", f"cannot resolve {host}: {exc.strerror}") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop(scheme, host, port)
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise Retryable(f"{host}:{port}: {reason}") from None

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

    # -- auth ----------------------------------------------------------------------

    def basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def authorization(self) -> str | None:
        if self.auth_scheme == "basic":
            return self.basic()
        if self.auth_scheme == "bearer":
            return f"Bearer {self.token}" if self.token else None
        return None

    def learn(self, resp: Response) -> str:
        """Read a 401's challenge; set up Basic or the token realm. Returns the scheme."""
        header = resp.header("WWW-Authenticate") or ""
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            self.auth_scheme = "basic"
        elif scheme == "bearer":
            realm = params.get("realm", "")
            parts = urlsplit(realm)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise Failure("protocol", f"{self.registry} announced an unusable token realm")
            host, port = split_host(parts.netloc, parts.scheme)
            if parts.scheme == "http" and not (self.scheme == "http" and is_loopback(host)):
                raise Failure(
                    "protocol",
                    f"{self.registry} announced a plain-HTTP token service {host}:{port}; "
                    "refused (credentials would travel unencrypted)",
                )
            self.realm = (parts.scheme, host, port, realm)
            self.allowed.add((host, port))
            self.service = params.get("service")
            self.auth_scheme = "bearer"
        else:
            raise Failure(
                "protocol", f"{self.registry} asks for an unsupported authentication {scheme!r}"
            )
        return scheme

    def login_refused(self, detail: str = "") -> Failure:
        """No credentials: say to log in; refused ones: say so and to log in again."""
        if self.username is None:
            return Failure(
                "unauthorized",
                f"{self.registry} requires a login: run `krate login {self.registry}`",
            )
        return Failure(
            "unauthorized",
            f"{self.registry} refused the user name or password for user {self.username}"
            f"{detail}; run `krate login {self.registry}` again",
        )

    def fetch_token(self, scope: str | None) -> None:
        assert self.realm is not None
        query = {}
        if self.service:
            query["service"] = self.service
        if scope:
            query["scope"] = scope
        _, _, _, realm = self.realm
        url = realm + ("&" if urlsplit(realm).query else "?") + urlencode(query)
        resp = self.retrying(lambda: self.send("GET", url, auth=self.basic()))
        if resp.status in (401, 403):
            raise self.login_refused(f" (token service answered {resp.status})")
        if resp.status != 200:
            raise Failure(
                "protocol", f"the token service of {self.registry} answered {resp.status}"
            )
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Failure("protocol", f"the token service of {self.registry} sent no token")
        self.token = token
        self.tokens[scope or ""] = token

    # -- requests with auth and retries ----------------------------------------------

    def retrying(self, attempt):
        """Call `attempt()` again after connection errors, 429 and 5xx, with backoff."""
        delay = self.backoff
        last = ""
        for n in range(self.retries + 1):
            try:
                resp = attempt()
            except Retryable as exc:
                last = str(exc)
            else:
                if resp.status != 429 and resp.status < 500:
                    return resp
                last = f"{self.registry} answered {resp.status}"
            if n < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise Failure(
            "unreachable",
            f"registry {self.registry} unreachable after {self.retries + 1} attempts ({last})",
        )

    def call(self, method: str, path_or_url: str, *, retry: bool = True, **kw) -> Response:
        """A registry request with the current credentials; renews a Bearer token on 401."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        for _ in range(3):

            def attempt():
                return self.send(method, url, auth=self.authorization(), **kw)

            resp = self.retrying(attempt) if retry else self._once(attempt)
            if resp.status != 401:
                return resp
            self.unauthorized(resp)
        raise Failure("unauthorized", f"{self.registry} keeps refusing the credentials")

    def _once(self, attempt) -> Response:
        resp = attempt()
        if resp.status == 429 or resp.status >= 500:
            raise Retryable(f"{self.registry} answered {resp.status}")
        return resp

    def unauthorized(self, resp: Response) -> None:
        """React to a 401: learn the challenge, fetch a token for the scope, or give up."""
        scheme, params = parse_challenge(resp.header("WWW-Authenticate") or "")
        who = f" for user {self.username}" if self.username else ""
        if scheme == "bearer":
            if self.auth_scheme != "bearer":
                self.learn(resp)
            scope = params.get("scope") or self.scope
            if scope in self.asked_scopes:
                if params.get("error") == "insufficient_scope":
                    raise Failure(
                        "denied",
                        f"{self.registry} did not grant the access needed ({scope}){who}: the "
                        "token has too little scope; ask for push permission on the repository",
                    )
                if self.renewals >= 2:  # an expired token is renewed; a refused one is not
                    raise Failure(
                        "unauthorized",
                        f"{self.registry} refused the token{who}; "
                        f"run `krate login {self.registry}`",
                    )
                self.renewals += 1
            self.asked_scopes.add(scope)
            self.fetch_token(scope)
            return
        if scheme == "basic":
            if self.auth_scheme != "basic":
                self.auth_scheme = "basic"
                if self.basic() is not None:
                    return
            raise self.login_refused()
        raise Failure("unauthorized", f"{self.registry} refused the request (401)")

    def check(self, resp: Response, what: str, *ok: int) -> Response:
        if resp.status in ok:
            return resp
        detail = registry_error(resp.body)
        detail = f" ({detail})" if detail else ""
        if resp.status == 403:
            raise Failure("denied", f"{self.registry} denied {what}{detail}: missing permission")
        if resp.status == 404 and "NAME_UNKNOWN" in detail:
            raise Failure("name_unknown", f"{self.registry} does not know the repository{detail}")
        if resp.status == 400 and "DIGEST_INVALID" in detail:
            raise Failure(
                "digest_invalid",
                f"{self.registry} found the uploaded bytes do not match their digest{detail}; "
                "run `krate artifacts verify`",
            )
        raise Failure("protocol", f"{self.registry} answered {resp.status} to {what}{detail}")

    def first(self) -> Response:
        """The first `GET /v2/`, unauthenticated. A loopback registry that answers a TLS
        hello in plain HTTP is used over plain HTTP, and krate says so (never silently)."""
        try:
            return self.retrying(lambda: self.send("GET", self.url("/v2/")))
        except Failure as exc:
            if exc.code != "tls_plain" or not self.fallback:
                raise
        self.close()
        self.scheme = "http"
        emit("notice", plain_http=True, registry=self.registry)
        return self.retrying(lambda: self.send("GET", self.url("/v2/")))

    def login(self) -> None:
        """`GET /v2/` and whatever challenge answers it, so that credentials are proven."""
        resp = self.first()
        if resp.status == 401:
            self.unauthorized(resp)
            resp = self.call("GET", "/v2/")
        self.check(resp, "the API version check", 200)
        emit("auth", scheme=self.auth_scheme)

    def begin(self, repository: str) -> None:
        """Learn the auth scheme up front so no blob travels twice (once unauthenticated)."""
        self.scope = f"repository:{repository}:pull,push"
        resp = self.first()
        if resp.status == 401:
            scheme = self.learn(resp)
            if scheme == "bearer":
                self.asked_scopes.add(self.scope)
                self.fetch_token(self.scope)
            elif self.basic() is None:
                raise self.login_refused()
            resp = self.call("GET", "/v2/")
        self.check(resp, "the API version check", 200)
        emit("auth", scheme=self.auth_scheme)


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


# -- push ---------------------------------------------------------------------------------


class Pusher:
    def __init__(self, client: Client, job: dict) -> None:
        self.c = client
        self.repo = job["repository"]
        self.chunk_size = int(job.get("chunk_size", 64 << 20))
        self.threshold = int(job.get("chunk_threshold", 128 << 20))

    def path(self, tail: str) -> str:
        return f"/v2/{self.repo}/{tail}"

    def present(self, digest: str) -> bool:
        resp = self.c.call("HEAD", self.path(f"blobs/{digest}"))
        if resp.status in (200, 307, 302):
            return True
        if resp.status == 404:
            return False
        self.c.check(resp, "a blob check", 200)
        return True

    def start(self) -> str:
        resp = self.c.call("POST", self.path("blobs/uploads/"), body=b"")
        self.c.check(resp, "starting an upload", 202)
        return self.location(resp)

    def location(self, resp: Response) -> str:
        loc = resp.header("Location")
        if not loc:
            raise Failure("protocol", f"{self.c.registry} started an upload but sent no Location")
        return urljoin(self.c.url("/"), loc)

    def blob(self, blob: dict) -> None:
        digest, size = blob["digest"], int(blob["size"])
        if self.present(digest):
            emit("blob", digest=digest, size=size, status="present", sent=0)
            return
        before = self.c.sent
        source = blob.get("path")
        data = base64.b64decode(blob["data"]) if source is None else None
        failures = 0
        loc: str | None = None
        offset = 0
        while True:
            try:
                if loc is None:
                    loc, offset = self.start(), 0
                if data is not None or size <= self.threshold:
                    body = data if data is not None else FileSlice(source, 0, size)
                    resp = self.c.call(
                        "PUT",
                        with_digest(loc, digest),
                        retry=False,
                        body=body,
                        headers={"Content-Type": "application/octet-stream"},
                        progress=(digest, 0, size),
                    )
                    self.c.check(resp, "a blob upload", 201)
                    break
                while offset < size:
                    n = min(self.chunk_size, size - offset)
                    resp = self.c.call(
                        "PATCH",
                        loc,
                        retry=False,
                        body=FileSlice(source, offset, n),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + n - 1}",
                        },
                        progress=(digest, offset, size),
                    )
                    self.c.check(resp, "a blob chunk upload", 202)
                    loc = self.location(resp)
                    offset += n
                    failures = 0
                resp = self.c.call("PUT", with_digest(loc, digest), retry=False, body=b"")
                self.c.check(resp, "closing a blob upload", 201)
                break
            except Retryable as exc:
                failures += 1
                if failures > self.c.retries:
                    raise Failure(
                        "unreachable",
                        f"registry {self.c.registry} unreachable after {failures} attempts ({exc})",
                    ) from None
                time.sleep(min(self.c.backoff * 2 ** (failures - 1), 8.0))
                loc, offset = self.resume(loc, size)
        emit("blob", digest=digest, size=size, status="uploaded", sent=self.c.sent - before)

    def resume(self, loc: str | None, size: int) -> tuple[str | None, int]:
        """Where a broken chunked upload stands (`Range: 0-N`), or start over."""
        if loc is None or size <= self.threshold:
            return None, 0
        try:
            resp = self.c.call("GET", loc, retry=False)
        except Retryable:
            return None, 0
        if resp.status != 204:
            return None, 0
        done = resp.header("Range") or ""
        try:
            end = int(done.rpartition("-")[2])
        except ValueError:
            return None, 0
        return self.location(resp), end + 1

    def manifest(self, item: dict) -> str:
        body = base64.b64decode(item["data"])
        resp = self.c.call(
            "PUT",
            self.path(f"manifests/{quote(item['reference'], safe=':')}"),
            body=body,
            headers={"Content-Type": item["media_type"]},
        )
        self.c.check(resp, "a manifest upload", 201)
        got = resp.header("Docker-Content-Digest")
        if got and got != item["digest"]:
            raise Failure(
                "protocol",
                f"{self.c.registry} stored the manifest as {got}, not {item['digest']}",
            )
        emit(
            "manifest",
            reference=item["reference"],
            digest=item["digest"],
            subject=resp.header("OCI-Subject"),
        )
        return resp.header("OCI-Subject") or ""

    def referrer(self, item: dict, oci_subject: str) -> None:
        """Make the manifest findable from its subject: the API, else the referrers tag."""
        subject = item["subject"]
        if oci_subject == subject:
            emit("referrers", subject=subject, via="api")
            return
        resp = self.c.call("GET", self.path(f"referrers/{subject}"), headers={"Accept": INDEX})
        kind = (resp.header("Content-Type") or "").split(";")[0].strip()
        if resp.status == 200 and kind == INDEX:
            emit("referrers", subject=subject, via="api")
            return
        tag = subject.replace(":", "-")
        resp = self.c.call("GET", self.path(f"manifests/{tag}"), headers={"Accept": INDEX})
        if resp.status == 404:
            index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
        else:
            self.c.check(resp, "reading the referrers tag", 200)
            try:
                index = json.loads(resp.body)
                assert isinstance(index.get("manifests"), list)
            except Exception:
                raise Failure(
                    "protocol", f"the referrers tag {tag} on {self.c.registry} is not an index"
                ) from None
        descriptor = item["descriptor"]
        if not any(d.get("digest") == descriptor["digest"] for d in index["manifests"]):
            index["manifests"].append(descriptor)
            body = json.dumps(index, separators=(",", ":")).encode()
            resp = self.c.call(
                "PUT", self.path(f"manifests/{tag}"), body=body, headers={"Content-Type": INDEX}
            )
            self.c.check(resp, "updating the referrers tag", 201)
        emit("referrers", subject=subject, via="tag", tag=tag)


def with_digest(location: str, digest: str) -> str:
    """Append `digest=` to the upload URL verbatim (replacing its query breaks `_state`)."""
    return location + ("&" if urlsplit(location).query else "?") + urlencode({"digest": digest})


def import_report() -> dict:
    """What this process can import and what it did: its sys.path and its loaded modules' files.

    (egress/proxy.py has the same few lines: neither helper may import the other.)
    """
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    return {"path": list(sys.path), "files": sorted(f for f in files if isinstance(f, str))}


def run(job: dict) -> None:
    if job.get("op") == "report":  # for `krate audit network --prove`: no connection at all
        emit("done", ok=True, python=import_report())
        return
    client = Client(job)
    try:
        if job["op"] == "login":
            client.login()
            emit("done", ok=True, auth=client.auth_scheme)
            return
        if job["op"] != "push":
            raise Failure("bad_job", f"unknown operation {job['op']!r}")
        pusher = Pusher(client, job)
        client.begin(pusher.repo)
        for blob in job["blobs"]:
            pusher.blob(blob)
        for item in job["manifests"]:
            oci_subject = pusher.manifest(item)
            if item.get("subject"):
                pusher.referrer(item, oci_subject)
        emit("done", ok=True, sent=client.sent, auth=client.auth_scheme)
    finally:
        client.close()


def main() -> int:
    try:
        job = json.loads(sys.stdin.buffer.read())
    except ValueError:
        emit("error", code="bad_job", message="the transport received no readable job")
        return 1
    try:
        run(job)
    except Failure as exc:
        emit("error", code=exc.code, message=str(exc))
        return 1
    except Retryable as exc:
        emit("error", code="unreachable", message=f"registry unreachable ({exc})")
        return 1
    except KeyboardInterrupt:
        emit("error", code="interrupted", message="interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
