"""Small OCI/Docker images built in the test, and pushed to the test registry over plain HTTP.

`layer(files)` makes a gzip tar layer, `image(...)` an image (config, layers, manifest in
OCI or Docker schema-2 form), `Pusher` uploads blobs and manifests with the
registry's own protocol (monolithic POST+PUT), and `index(...)` makes a multi-platform
OCI index or Docker manifest list. Everything here is test code; krate never imports it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def layer(files: dict[str, bytes], *, level: int = 6) -> tuple[bytes, bytes]:
    """(gzip blob, uncompressed tar) of regular files (parents created), reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in sorted(files.items()):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return gzip.compress(plain, compresslevel=level, mtime=0), plain


@dataclass
class Image:
    manifest: bytes
    media_type: str
    config: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes (config + layers)
    platform: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha(self.config)

    @property
    def layers(self) -> list[str]:
        return [d["digest"] for d in json.loads(self.manifest)["layers"]]

    def descriptor(self) -> dict:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest),
            "platform": self.platform,
        }


def image(
    layers: list[tuple[bytes, bytes]],
    *,
    arch: str = "amd64",
    os_name: str = "linux",
    variant: str | None = None,
    docker: bool = False,
    layer_type: str | None = None,
    cmd: list[str] | None = None,
) -> Image:
    """An image of `layers` (from `layer()`): OCI by default, Docker schema 2 with `docker`."""
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    config = encode(
        {
            **platform,
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(plain) for _gz, plain in layers]},
        }
    )
    kind = layer_type or (DOCKER_LAYER if docker else OCI_LAYER)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": sha(config),
            "size": len(config),
        },
        "layers": [{"mediaType": kind, "digest": sha(gz), "size": len(gz)} for gz, _ in layers],
    }
    blobs = {sha(config): config, **{sha(gz): gz for gz, _ in layers}}
    media = manifest["mediaType"]
    return Image(encode(manifest), media, config, blobs, platform)


def index(images: list[Image], *, docker: bool = False, extra: list[dict] = ()) -> bytes:
    """An OCI image index (or a Docker manifest list) of `images`, plus `extra` entries."""
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker else OCI_INDEX,
            "manifests": [i.descriptor() for i in images] + list(extra),
        }
    )


class Pusher:
    """Uploads to the test registry as any client would (plain HTTP, Basic auth)."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None):
        self.port = port
        self.headers = {}
        if user is not None:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {pair}"

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        resp, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if resp.status == 200:
            return digest
        resp, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert resp.status == 202, (resp.status, body)
        loc = urlsplit(resp.getheader("Location"))
        target = f"{loc.path}?{loc.query}&{urlencode({'digest': digest})}"
        resp, body = self.request("PUT", target, data, {"Content-Type": "application/octet-stream"})
        assert resp.status == 201, (resp.status, body)
        return digest

    def manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        resp, body = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", data, {"Content-Type": media_type}
        )
        assert resp.status == 201, (resp.status, body)
        return sha(data)

    def image(self, repo: str, tag: str | None, img: Image) -> str:
        """Blobs, then the manifest under `tag` (or only by digest when `tag` is None)."""
        for data in img.blobs.values():
            self.blob(repo, data)
        return self.manifest(repo, tag or img.digest, img.manifest, img.media_type)

    def index(self, repo: str, tag: str, images: list[Image], docker: bool = False, **kw) -> str:
        for img in images:
            self.image(repo, None, img)
        data = index(images, docker=docker, **kw)
        return self.manifest(repo, tag, data, DOCKER_LIST if docker else OCI_INDEX)


def blob_file(registry_storage: Path, digest: str) -> Path:
    """Where docker-registry (filesystem driver) keeps a blob's bytes."""
    hexd = digest.split(":", 1)[1]
    return registry_storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
