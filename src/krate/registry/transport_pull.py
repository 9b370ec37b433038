"""The registry transport's pull: manifest (through an index, for one platform), config, layers.

Part of the transport helper (transport.py), loaded by its exact file like the other
parts; standard library only. It reads what a registry says about an image and
writes the blobs straight into krate's content-addressed store (`blob_dir` of the
job, `<data>/artifacts/sha256`) through transport_blobs.py, which checks each one's
sha256 and size as it streams and keeps nothing that does not match. Copying every
byte again through krate would cost a second pass; the transport is the only
process that may hold the connection. A blob already in the store is not fetched
again, which makes a broken pull resumable.

Every name it takes from the registry is checked before it becomes a path or a URL:
digests only `sha256:<64 hex>`, sizes plain non-negative integers; a manifest fetched
by digest must hash to it. zstd layers are refused before any layer is fetched when
krate's Python has no `compression.zstd` (the job says), as are foreign
(non-distributable) layers. A blob download may follow the registry's redirect to
its storage host (how ghcr.io, Docker Hub, ECR and most others serve layers): only
over HTTPS (plain HTTP only from a loopback registry to loopback), never with
krate's credentials, and reported like every connection.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from urllib.parse import quote, urljoin, urlsplit

from krate.registry.transport_blobs import BlobDir, Receiver, local
from krate.registry.transport_hosts import is_loopback
from krate.registry.transport_http import Failure, Response, destination, emit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))
CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
GZIP_LAYERS = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
PLAIN_LAYERS = ("application/vnd.oci.image.layer.v1.tar",)
ZSTD_LAYERS = ("application/vnd.oci.image.layer.v1.tar+zstd",)
FOREIGN_LAYERS = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
MAX_REDIRECTS = 5
PARALLEL = 3  # layers downloaded at once, each on its own connection (docker's default)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REDIRECTS = (301, 302, 303, 307, 308)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_name(p: dict) -> str:
    parts = [str(p.get("os") or "?"), str(p.get("architecture") or "?")]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(parts)


# Variants a platform means when it names none (as containerd's platform matcher reads them).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def _variant(p: dict) -> str | None:
    return p.get("variant") or _DEFAULT_VARIANT.get(str(p.get("architecture")))


def choose(index: dict, want: dict) -> dict:
    """The descriptor in `index` for platform `want` ({os, architecture[, variant]}).

    Entries without a usable platform (build attestations, `unknown/unknown`) are
    skipped. Without a variant asked for, the architecture's default variant (or the
    first entry of that os/architecture) is taken. Failure lists what there is.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise Failure("protocol", "the image index lists no manifests")
    usable = []
    for entry in entries:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(plat, dict) or "unknown" in (plat.get("os"), plat.get("architecture")):
            continue
        if entry.get("mediaType") not in (*MANIFESTS, None):
            continue
        usable.append(entry)
    same = [
        e
        for e in usable
        if e["platform"].get("os") == want["os"]
        and e["platform"].get("architecture") == want["architecture"]
    ]
    if want.get("variant"):
        same = [e for e in same if _variant(e["platform"]) == want["variant"]]
    else:
        preferred = [e for e in same if _variant(e["platform"]) == _variant(want)]
        same = preferred or same
    if same:
        return same[0]
    there = ", ".join(sorted({platform_name(e["platform"]) for e in usable})) or "none"
    raise Failure(
        "no_platform",
        f"the image has no {platform_name(want)} variant; available: {there} "
        "(choose one with --platform)",
    )


def descriptor(value: object, what: str) -> tuple[str, int, str]:
    """(digest, size, mediaType) of a descriptor, checked before any of it is used."""
    if not isinstance(value, dict):
        raise Failure("protocol", f"the manifest's {what} is not a descriptor")
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        algorithm = digest.partition(":")[0] if isinstance(digest, str) else ""
        if algorithm and algorithm != "sha256" and ":" in digest:
            raise Failure(
                "unsupported", f"{what} uses the digest {algorithm!r}; krate needs sha256"
            )
        raise Failure("protocol", f"the manifest's {what} has no valid sha256 digest")
    if type(size) is not int or size < 0:
        raise Failure("protocol", f"the manifest's {what} has no valid size")
    return digest, size, str(value.get("mediaType") or "")


def check_layers(layers: list[tuple[str, int, str]], zstd: bool) -> None:
    """Refuse, before any layer is fetched, what krate could not unpack."""
    for digest, _size, media in layers:
        if media in FOREIGN_LAYERS:
            raise Failure(
                "unsupported",
                f"layer {digest[:19]} is a foreign (non-distributable) layer ({media}); "
                "krate pulls only layers the registry serves",
            )
        if media in ZSTD_LAYERS and not zstd:
            raise Failure(
                "unsupported",
                f"layer {digest[:19]} is zstd-compressed and this Python has no "
                "compression.zstd (Python 3.14+); nothing was downloaded",
            )
        if media not in (*GZIP_LAYERS, *PLAIN_LAYERS, *ZSTD_LAYERS):
            raise Failure("unsupported", f"layer {digest[:19]} has an unknown type {media!r}")


def sibling(client):
    """A client for another thread: its own connections and token, the same rules.

    The destinations allowed (the registry, its token service, storage hosts it
    redirects to) are one shared set; the credentials and the scheme learnt are copied.
    """
    twin = copy.copy(client)
    twin.pool = copy.copy(client.pool)
    twin.pool.conns = {}
    twin.auth = copy.copy(client.auth)
    twin.auth.asked = set(client.auth.asked)
    return twin


class Puller:
    """One image: manifest (by tag or digest), the platform's manifest from an index, blobs."""

    def __init__(self, client, job: dict) -> None:
        self.c = client
        self.repo = job["repository"]
        self.reference = job["reference"]
        self.want = job["platform"]
        self.explicit = bool(job.get("platform_explicit"))
        self.zstd = bool(job.get("zstd"))
        self.store = BlobDir(job["blob_dir"])
        self.received = 0
        self.lock = threading.Lock()

    def path(self, tail: str) -> str:
        return f"/v2/{self.repo}/{tail}"

    def run(self) -> dict:
        body, media = self.manifest(self.reference)
        index_digest = None
        platform = None
        if media in INDEXES:
            index_digest = sha256(body)
            entry = choose(self.doc(body, "image index"), self.want)
            platform = platform_name(entry["platform"])
            digest, _size, _media = descriptor(entry, "platform manifest")
            body, media = self.manifest(digest)
            if media in INDEXES:
                raise Failure("unsupported", f"the {platform} entry is itself an index")
        manifest_digest = sha256(body)
        doc = self.doc(body, "manifest")
        config = descriptor(doc.get("config"), "config")
        if config[2] and config[2] not in CONFIGS:
            raise Failure(
                "unsupported",
                f"{self.c.registry}/{self.repo} is not a container image (its config is "
                f"{config[2]!r}); krate pulls images only",
            )
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise Failure("protocol", "the manifest lists no layers")
        layers = [descriptor(d, f"layer {i + 1}") for i, d in enumerate(raw_layers)]
        check_layers(layers, self.zstd)
        self.blob(config)
        if platform is None:
            platform = self.config_platform(config[0])
        self.fetch_all(layers)
        try:
            stored = self.store.put(manifest_digest, body)
        except OSError as exc:
            raise local(exc) from None
        status = "fetched" if stored else "present"
        emit("blob", digest=manifest_digest, size=len(body), status=status, received=0)
        self.store.sync()
        return {
            "manifest": manifest_digest,
            "media_type": media,
            "index": index_digest,
            "config": config[0],
            "layers": [d for d, _s, _m in layers],
            "platform": platform,
            "received": self.received,
        }

    def doc(self, body: bytes, what: str) -> dict:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Failure("protocol", f"the registry sent an {what} that is not JSON")
        return doc

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """A manifest or index by tag or digest; by digest, its bytes must hash to it."""
        what = f"{self.c.registry}/{self.repo}{'@' if ':' in reference else ':'}{reference}"
        resp = self.c.call(
            "GET", self.path(f"manifests/{quote(reference, safe=':')}"), headers={"Accept": ACCEPT}
        )
        if resp.status == 404:
            detail = self._error(resp)
            if "NAME_UNKNOWN" in detail:
                raise Failure("not_found", f"{self.c.registry} has no repository {self.repo}")
            raise Failure("not_found", f"{what} was not found in the registry")
        self.c.check(resp, "a manifest request", 200)
        body = resp.body
        if reference.startswith("sha256:") and sha256(body) != reference:
            raise Failure(
                "digest_mismatch",
                f"the manifest the registry sent for {what} hashes to {sha256(body)}; refused",
            )
        media = (resp.header("Content-Type") or "").split(";")[0].strip()
        declared = self.doc(body, "manifest").get("mediaType")
        if media in DOCKER_V1 or declared in DOCKER_V1:
            raise Failure(
                "unsupported",
                f"{what} is a Docker schema 1 manifest, which is deprecated; push it again "
                "with a current tool",
            )
        if isinstance(declared, str) and declared in (*MANIFESTS, *INDEXES):
            media = declared
        elif media not in (*MANIFESTS, *INDEXES):
            media = INDEXES[0] if "manifests" in self.doc(body, "manifest") else MANIFESTS[0]
        return body, media

    @staticmethod
    def _error(resp: Response) -> str:
        try:
            return str(json.loads(resp.body)["errors"][0].get("code", ""))
        except Exception:
            return ""

    def config_platform(self, digest: str) -> str:
        """The platform a single-manifest image names in its config; checked when asked for."""
        try:
            with open(self.store.path(digest), "rb") as fh:
                config = json.loads(fh.read(4 << 20))
        except (OSError, ValueError):
            config = None
        if not isinstance(config, dict):
            raise Failure("protocol", f"the image config {digest[:19]} is not JSON")
        found = {
            "os": config.get("os"),
            "architecture": config.get("architecture"),
            "variant": config.get("variant"),
        }
        name = platform_name(found)
        same = found["os"] == self.want["os"] and found["architecture"] == self.want["architecture"]
        if self.explicit and not same:
            raise Failure(
                "no_platform",
                f"the image is {name} only, not {platform_name(self.want)}; nothing else to choose",
            )
        return name

    def fetch_all(self, layers: list[tuple[str, int, str]]) -> None:
        """The layers, up to PARALLEL at a time on connections of their own (as docker pulls)."""
        missing = []
        for layer in layers:
            if self.store.has(layer[0]):
                self.blob(layer, self.c)  # reported present
            elif all(layer[0] != m[0] for m in missing):
                missing.append(layer)
        if len(missing) <= 1:
            for layer in missing:
                self.blob(layer, self.c)
            return
        todo = list(reversed(missing))
        errors: list[BaseException] = []

        def work(client) -> None:
            try:
                while not errors:
                    with self.lock:
                        if not todo:
                            return
                        layer = todo.pop()
                    self.blob(layer, client)
            except BaseException as exc:  # the first one is raised below
                errors.append(exc)
            finally:
                client.close()

        threads = [
            threading.Thread(target=work, args=(sibling(self.c),), daemon=True)
            for _ in range(min(PARALLEL, len(missing)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def blob(self, desc: tuple[str, int, str], c=None) -> None:
        c = c or self.c
        digest, size, _media = desc
        if self.store.has(digest):
            emit("blob", digest=digest, size=size, status="present", received=0)
            return
        receiver = Receiver(self.store, digest, size)
        url = c.url(self.path(f"blobs/{digest}"))

        def attempt() -> Response:
            receiver.received = 0
            return self.follow(url, receiver, c)

        resp = c.retrying(attempt)
        if resp.status == 404:
            raise Failure("not_found", f"{c.registry} lacks blob {digest} that the manifest names")
        c.check(resp, "a blob download", 200)
        with self.lock:
            self.received += receiver.received
        emit("blob", digest=digest, size=size, status="fetched", received=receiver.received)

    def follow(self, url: str, receiver: Receiver, c) -> Response:
        """GET a blob, following the registry's redirects to its storage, credentials kept home."""
        home = urlsplit(url)
        for _ in range(MAX_REDIRECTS + 1):
            same = urlsplit(url).netloc == home.netloc and urlsplit(url).scheme == home.scheme
            if same:
                resp = c.call("GET", url, retry=False, sink=receiver)
            else:
                resp = c.pool.send("GET", url, sink=receiver)
                if resp.status == 429 or resp.status >= 500:
                    return resp
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.header("Location")
            if not location:
                raise Failure("protocol", f"{c.registry} redirected a blob to nowhere")
            url = urljoin(url, location)
            self.allow(url)
        raise Failure("protocol", f"{c.registry} redirected a blob too many times")

    def allow(self, url: str) -> None:
        """A blob storage host the registry sent krate to: HTTPS, or loopback to loopback."""
        parts = urlsplit(url)
        host, port = destination(parts.netloc, parts.scheme)
        if parts.scheme != "https" and not (
            parts.scheme == "http"
            and self.c.pool.scheme == "http"
            and is_loopback(host)
            and is_loopback(self.c.pool.host)
        ):
            raise Failure(
                "protocol",
                f"{self.c.registry} redirected a blob to plain HTTP at {host}:{port}; refused",
            )
        self.c.pool.allowed.add((host, port))
