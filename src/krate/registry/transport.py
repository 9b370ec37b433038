"""krate's registry transport: the only code of krate that opens a network connection.

Started by `krate login` / `krate push` / `krate image pull` as its own process, before
krate locks itself out of IP sockets (and before krate loads any third-party package), with
an isolated interpreter (`python -I -S transport.py`: no site-packages, no .pth
files, no PYTHON* variables, not even this folder), so no third-party code and no
file planted next to krate ever runs with network access. Standard library only;
it cannot import krate. The job `{"op": "report"}` answers with its sys.path and
loaded module files (`krate audit network --prove` checks them).

Input: one JSON job line on stdin (credentials included: never argv, never the
environment). A pull's job says `"credentials": "ask"` instead: the transport asks
with a `credentials` line when the registry first challenges it, and reads them as
the next line on stdin (transport_auth.Asker). Output: JSON lines on stdout, for krate
to record and show: `egress` (host and port of every connection it opens, the format
of krate.netguard.ledger.report_line), `progress`, `blob`, `manifest`, `referrers`,
`auth`, `credentials`, then `done` or `error` (one line a person can act on; exit
status 1).

It speaks the OCI distribution push sequence (see docs/push.md): `GET /v2/` and
the Basic or Bearer challenge that answers it; per blob `HEAD` (skip when
present), `POST` an upload, then one `PUT` (small blobs) or `PATCH` chunks and a
closing `PUT`, streamed from the file in bounded memory; manifests; and the
referrers API or, where the registry lacks it, the `sha256-<hex>` referrers tag.
Connection errors, 429 and 5xx are retried with backoff; a broken chunked upload
resumes from the offset the registry reports. For a pull (transport_pull.py): the
manifest by tag or digest, the platform's manifest from an index, then each blob
not yet in krate's store by `GET`, written into the store as it streams.

It must never: connect anywhere but the registry of the job, the token realm that
registry announces and, for a pull's blob downloads only, the storage host the
registry redirects a blob to (HTTPS, without credentials); send credentials to any
other host or over plain HTTP to a host the job did not allow; follow a redirect
carrying Authorization; put a credential, URL path or response body in its output.

The code is in six files of its own, all standard library: this one (the job, the client
and the pusher), transport_http.py (connections and `retry()`), transport_auth.py
(the challenge state machine), transport_pull.py and transport_blobs.py (`krate image
pull`: the image's manifests, and its blobs checked into krate's store as they
stream) and transport_hosts.py (host names; krate's own side uses it too), which
splits host:port with krate/hostport.py. Run as a script, krate
is not importable (`-I -S`), so `_load_parts` loads the parts by their exact files
beside this one and hostport.py from the folder above, as the egress proxy loads
krate's policy modules: nothing is added to sys.path, and the proof's helpers layer
allows exactly these files (krate.registry.client.TRANSPORT_FILES). One script
with everything inside would also keep the helper standard-library only, but not
under 500 lines.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from urllib.parse import quote, urlencode, urljoin, urlsplit

# in the order they import
PARTS = ("transport_hosts", "transport_http", "transport_auth", "transport_blobs", "transport_pull")
SHARED = ("hostport",)  # krate's own modules the parts import (from the folder above)


def _load_parts() -> None:
    """Register the parts under their krate names, each from its exact file here."""
    from importlib.util import module_from_spec, spec_from_file_location

    here = os.path.dirname(__file__)
    files = [(f"krate.{m}", os.path.join(os.path.dirname(here), f"{m}.py")) for m in SHARED]
    files += [(f"krate.registry.{part}", os.path.join(here, f"{part}.py")) for part in PARTS]
    for name, path in files:
        spec = spec_from_file_location(name, path)
        module = module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _warm_early() -> tuple:
    """Start making the TLS context now, in a thread: OpenSSL reads the system's CA
    certificates (some 20 ms) without holding the GIL, while the parts import."""
    import ssl
    import threading

    made: list = []
    thread = threading.Thread(target=lambda: made.append(ssl.create_default_context()))
    thread.daemon = True
    thread.start()
    return thread, made


_early_tls = None
if __name__ == "__main__":
    if "--tls-later" not in sys.argv[1:]:  # krate's hint: a loopback registry (early.py)
        _early_tls = _warm_early()
    _load_parts()

from krate.registry.transport_auth import Asker, Auth  # noqa: E402
from krate.registry.transport_http import (  # noqa: E402
    Backoff,
    Failure,
    FileSlice,
    Pool,
    Response,
    Retryable,
    emit,
    retry,
    warm,
    warm_loopback,
)
from krate.registry.transport_pull import Puller  # noqa: E402

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = f"{MANIFEST}, {INDEX}"


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


class Client:
    """Requests to one registry (and its token realm), with auth, retries and an egress report."""

    def __init__(self, job: dict) -> None:
        self.registry = job["registry"]
        self.pool = Pool(self.registry, job["scheme"], job)
        self.auth = Auth(self.registry, job, self.pool.allowed, Asker(sys.stdin.buffer))
        self.retries = int(job.get("retries", 4))
        self.backoff = float(job.get("backoff", 0.5))
        self.fallback = bool(job.get("http_fallback"))

    def tries(self) -> Backoff:
        return Backoff(self.retries, self.backoff, self.registry)

    def url(self, path: str) -> str:
        return self.pool.url(path)

    def close(self) -> None:
        self.pool.close()

    def call(self, method: str, path_or_url: str, *, retry: bool = True, **kw) -> Response:
        """A registry request with the current credentials; renews a Bearer token on 401."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        for _ in range(3):

            def attempt():
                return self.pool.send(method, url, auth=self.auth.header(), **kw)

            resp = self.retrying(attempt) if retry else self._once(attempt)
            if resp.status != 401:
                return resp
            self.unauthorized(resp)
        raise Failure("unauthorized", f"{self.registry} keeps refusing the credentials")

    def retrying(self, attempt) -> Response:
        return retry(attempt, self.tries())

    def _once(self, attempt) -> Response:
        resp = attempt()
        if resp.status == 429 or resp.status >= 500:
            raise Retryable(f"{self.registry} answered {resp.status}")
        return resp

    def unauthorized(self, resp: Response) -> None:
        """React to a 401: learn the challenge, fetch a token for the scope, or give up."""
        challenge = resp.header("WWW-Authenticate") or ""
        need_token, scope = self.auth.challenged(challenge, self.pool.scheme)
        if need_token:
            self.fetch_token(scope)

    def fetch_token(self, scope: str | None) -> None:
        url = self.auth.token_url(scope)
        basic = self.auth.basic()
        self.auth.take_token(self.retrying(lambda: self.pool.send("GET", url, auth=basic)))

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
            return self.retrying(lambda: self.pool.send("GET", self.url("/v2/")))
        except Failure as exc:
            if exc.code != "tls_plain" or not self.fallback:
                raise
        self.close()
        self.pool.scheme = "http"
        emit("notice", plain_http=True, registry=self.registry)
        return self.retrying(lambda: self.pool.send("GET", self.url("/v2/")))

    def begin(self, scope: str | None = None) -> None:
        """`GET /v2/` and the challenge that answers it, before anything else: a login proves
        the credentials; a push (`scope`) learns the scheme so no blob travels twice."""
        self.auth.scope = scope
        resp = self.first()
        if resp.status == 401:
            challenge = resp.header("WWW-Authenticate") or ""
            need_token, token_scope = self.auth.first_challenge(challenge, self.pool.scheme)
            if need_token:
                self.fetch_token(token_scope)
            resp = self.call("GET", "/v2/")
        self.check(resp, "the API version check", 200)
        emit("auth", scheme=self.auth.scheme)


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
        before = self.c.pool.sent
        upload = Upload(self, blob)
        retry(upload.attempt, upload.tries, upload.recover)
        emit("blob", digest=digest, size=size, status="uploaded", sent=self.c.pool.sent - before)

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
        index = self.referrers_index(tag)
        descriptor = item["descriptor"]
        if not any(d.get("digest") == descriptor["digest"] for d in index["manifests"]):
            index["manifests"].append(descriptor)
            body = json.dumps(index, separators=(",", ":")).encode()
            resp = self.c.call(
                "PUT", self.path(f"manifests/{tag}"), body=body, headers={"Content-Type": INDEX}
            )
            self.c.check(resp, "updating the referrers tag", 201)
        emit("referrers", subject=subject, via="tag", tag=tag)

    def referrers_index(self, tag: str) -> dict:
        """The index under the referrers tag (empty when there is none); anything else refused."""
        resp = self.c.call("GET", self.path(f"manifests/{tag}"), headers={"Accept": INDEX})
        if resp.status == 404:
            return {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
        self.c.check(resp, "reading the referrers tag", 200)
        try:
            index = json.loads(resp.body)
        except ValueError:
            index = None
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
            raise Failure(
                "protocol", f"the referrers tag {tag} on {self.c.registry} is not an index"
            )
        return index


class Upload:
    """One blob's upload: one `PUT`, or `PATCH` chunks and a closing `PUT`; resumable.

    A failure in a row counts against the retries; a chunk that went through resets them.
    """

    def __init__(self, pusher: Pusher, blob: dict) -> None:
        self.p, self.c = pusher, pusher.c
        self.digest, self.size = blob["digest"], int(blob["size"])
        self.source = blob.get("path")
        self.data = base64.b64decode(blob["data"]) if self.source is None else None
        self.loc: str | None = None
        self.offset = 0
        self.tries = self.c.tries()

    def attempt(self) -> None:
        if self.loc is None:
            self.loc, self.offset = self.p.start(), 0
        if self.data is not None or self.size <= self.p.threshold:
            self.whole()
        else:
            self.chunks()

    def whole(self) -> None:
        body = self.data if self.data is not None else FileSlice(self.source, 0, self.size)
        resp = self.c.call(
            "PUT",
            with_digest(self.loc, self.digest),
            retry=False,
            body=body,
            headers={"Content-Type": "application/octet-stream"},
            progress=(self.digest, 0, self.size),
        )
        self.c.check(resp, "a blob upload", 201)

    def chunks(self) -> None:
        while self.offset < self.size:
            n = min(self.p.chunk_size, self.size - self.offset)
            resp = self.c.call(
                "PATCH",
                self.loc,
                retry=False,
                body=FileSlice(self.source, self.offset, n),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{self.offset}-{self.offset + n - 1}",
                },
                progress=(self.digest, self.offset, self.size),
            )
            self.c.check(resp, "a blob chunk upload", 202)
            self.loc = self.p.location(resp)
            self.offset += n
            self.tries.failures = 0
        resp = self.c.call("PUT", with_digest(self.loc, self.digest), retry=False, body=b"")
        self.c.check(resp, "closing a blob upload", 201)

    def recover(self) -> None:
        self.loc, self.offset = self.p.resume(self.loc, self.size)


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
    if job.get("op") not in ("login", "push", "pull"):
        raise Failure("bad_job", f"unknown operation {job.get('op')!r}")
    client = Client(job)
    try:
        if job["op"] == "login":
            client.begin()
            emit("done", ok=True, auth=client.auth.scheme)
            return
        if job["op"] == "pull":
            puller = Puller(client, job)
            client.begin(f"repository:{puller.repo}:pull")
            emit("done", ok=True, auth=client.auth.scheme, **puller.run())
            return
        pusher = Pusher(client, job)
        client.begin(f"repository:{pusher.repo}:pull,push")
        for blob in job["blobs"]:
            pusher.blob(blob)
        for item in job["manifests"]:
            oci_subject = pusher.manifest(item)
            if item.get("subject"):
                pusher.referrer(item, oci_subject)
        emit("done", ok=True, sent=client.pool.sent, auth=client.auth.scheme)
    finally:
        client.close()


def main() -> int:
    if _early_tls is not None:  # else made when a connection needs it (Pool)
        warm(_early_tls)  # while krate still loads keyring and its store; the job comes after
    else:
        warm_loopback()  # the little a loopback registry's first connection needs, before it
    try:
        job = json.loads(sys.stdin.buffer.readline())  # credentials may follow (Asker)
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


def leave(code: int) -> None:
    """Exit without tearing the interpreter down (some 8 ms krate would wait for): every
    blob is fsynced and every line flushed by now, and no thread is left."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # krate stopped reading: nothing more to tell it
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    leave(main())
