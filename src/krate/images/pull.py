"""`krate image pull`: an image from an OCI registry into the store, through the transport.

Pull is explicit network, like push: the registry transport helper (registry/
transport.py, started before krate locks itself out of IP sockets) speaks to the
registry with the keychain's credentials and the same destination rules, and
every connection it makes is recorded in `krate audit network`. It streams each
blob into the content-addressed store and checks its size and sha256 on the way
(registry/transport_pull.py); this module names the image, the platform and the
store folder, then records the image (`image.pulled`, images/catalog.py) once
every blob is in place. A failed pull records no image and leaves no partial blob;
the blobs that did arrive stay, so pulling again fetches only what is missing.

Domain code: never prints, never reads the environment, imports no networking module.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from krate.errors import KrateError, UsageError
from krate.registry.client import (
    Transport,
    TransportFailed,
    connection_for,
    parse_registry,
    secret_forms,
    used_plain_http,
)

if TYPE_CHECKING:
    from krate.images.model import Image
    from krate.paths import Paths
    from krate.registry.keychain import Credentials
    from krate.store.connection import Store

_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PLATFORM_WORD = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"  # where docker.io's API lives, as docker knows
# uname's machine -> OCI architecture (and variant), as Go's GOARCH names them.
_ARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class PullReference:
    """An image name: registry (as written), repository, and a tag or a digest (or both)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def endpoint(self) -> str:
        """The host the API is at: Docker Hub's is not docker.io itself."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What the manifest is fetched by: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        """The name recorded: `registry/repo@sha256:...` by digest, else `registry/repo:tag`."""
        base = f"{self.registry}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"


def parse_reference(text: str) -> PullReference:
    """`registry/repo[:tag][@sha256:hex]`; a name without a registry means Docker Hub.

    As docker reads it: `alpine` is `docker.io/library/alpine:latest`, and the first
    part is a registry only when it has a `.` or `:` or is `localhost`.
    """
    value = text.strip()
    name, at, digest = value.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise UsageError(f"{text!r}: a digest is sha256:<64 lowercase hex digits>")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first.lower() == "localhost"):
        registry = parse_registry(first)
    else:
        registry, rest = DOCKER_HUB, name
        if "/" not in rest:
            rest = f"library/{rest}"
    if registry in ("index.docker.io", DOCKER_HUB_ENDPOINT):
        registry = DOCKER_HUB
    repository, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        repository, tag = rest, ""
    if not repository or not _REPO.fullmatch(repository) or len(repository) > 255:
        raise UsageError(
            f"{text!r} is not an image name (registry/repository:tag, e.g. "
            "ghcr.io/me/app:1.0; lowercase letters, digits and . _ - / in the repository)"
        )
    if tag and not _TAG.fullmatch(tag):
        raise UsageError(f"{tag!r} is not a valid tag (letters, digits, _ . -; up to 128)")
    return PullReference(registry, repository, tag or (None if at else "latest"), digest or None)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def job(self) -> dict[str, Any]:
        return {"os": self.os, "architecture": self.architecture, "variant": self.variant}


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]`, as docker's --platform (e.g. linux/arm64, linux/arm/v7)."""
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(_PLATFORM_WORD.fullmatch(p) for p in parts):
        raise UsageError(f"{text!r} is not a platform: write os/arch, e.g. linux/amd64")
    return Platform(*parts)


def host_platform(machine: str | None = None) -> Platform:
    """This machine's platform in OCI names. Always linux: on macOS images run in a Linux VM."""
    machine = machine or os.uname().machine  # not platform.machine(): 30 ms of imports
    arch, variant = _ARCH.get(machine.lower(), (None, None))
    if arch is None:
        raise UsageError(
            f"krate does not know the image architecture for {machine!r}; "
            "give one with --platform, e.g. --platform linux/amd64"
        )
    return Platform("linux", arch, variant)


def zstd_available() -> bool:
    """Whether this Python can decompress zstd layers (`compression.zstd`, 3.14+)."""
    import importlib.util

    try:
        return importlib.util.find_spec("compression.zstd") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class PullResult:
    ref: str
    image: Image
    manifest_digest: str
    index_digest: str | None
    platform: str | None
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    bytes_received: int = 0
    duration_s: float = 0.0
    plain_http: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["image"] = self.image.config_digest
        out["layers"] = list(self.image.layer_digests)
        return out


def pull(
    transport: Transport,
    *,
    store: Store,
    open_store: Callable[[], Any],
    paths: Paths,
    ref: PullReference,
    platform: Platform,
    platform_explicit: bool = False,
    credentials: Credentials | None = None,
    ask_credentials: Callable[[], Credentials | None] | None = None,
    plain_http: bool = False,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PullResult:
    """Pull through the started transport; record the image once all its blobs are stored.

    `ask_credentials` (the keychain) is called only if the registry asks for a login,
    while the transport is already connected; `credentials` are sent with the job.
    """
    from krate.images import blobs, catalog

    connection = connection_for(ref.endpoint, plain_http)
    blob_store = blobs.store_of(paths)
    blob_store._ensure_dirs()
    job = {
        "op": "pull",
        "registry": ref.endpoint,
        "scheme": connection.scheme,
        "http_fallback": connection.http_fallback,
        "repository": ref.repository,
        "reference": ref.reference,
        "platform": platform.job(),
        "platform_explicit": platform_explicit,
        "zstd": zstd_available(),
        "blob_dir": str(blob_store.root),
        "username": credentials.username if credentials else None,
        "password": credentials.password if credentials else None,
    }
    started = clock()
    secret = secret_forms(credentials.username, credentials.password) if credentials else ()
    try:
        done = transport.run(
            job, open_store=open_store, command="krate image pull", on_message=on_message,
            secrets=secret, ask=ask_credentials,
        )  # fmt: skip
    except TransportFailed as exc:
        raise KrateError(f"pull of {ref} failed: {exc}") from None
    finally:
        del job
        _sweep(blob_store.root, transport.pid)
    layers = [str(d) for d in done.get("layers", [])]
    image = catalog.add(
        store,
        ref=str(ref),
        manifest_digest=str(done["manifest"]),
        config_digest=str(done["config"]),
        layer_digests=layers,
        source="registry",
        paths=paths,
    )
    messages = transport.messages
    return PullResult(
        ref=str(ref),
        image=image,
        manifest_digest=str(done["manifest"]),
        index_digest=done.get("index"),
        platform=done.get("platform"),
        fetched=_blobs(messages, "fetched"),
        present=_blobs(messages, "present"),
        bytes_received=int(done.get("received", 0)),
        duration_s=round(clock() - started, 3),
        plain_http=used_plain_http(connection, messages),
    )


def _sweep(root: os.PathLike | str, pid: int) -> None:
    """Temp files of this pull's transport, if it died before cleaning up (killed, crashed)."""
    prefix = f".tmp-pull-{pid}-"
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _blobs(messages: list[dict[str, Any]], status: str) -> list[str]:
    return [
        str(m["digest"]) for m in messages if m.get("type") == "blob" and m.get("status") == status
    ]
