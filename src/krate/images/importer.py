"""`krate image import PATH`: a `docker save` tar, an OCI image layout (folder or tar), or a
root filesystem folder. No network.

Every blob goes into the store through `blobs.put_stream`, checked against the digest and
size its descriptor gives (a layout's blobs), or named by what it hashes to (a `docker
save` archive names files, not digests). A `docker save` archive and a root folder get an
OCI manifest written here (uncompressed layers), so their manifest digest differs from a
registry's for the same image: images are identified by config digest (issue facts).
"""

from __future__ import annotations

import json
import os
import platform
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from krate.errors import KrateError
from krate.images import blobs, catalog, roots
from krate.images.model import Image
from krate.paths import Paths

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = {OCI_INDEX, DOCKER_LIST}
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")
MAX_JSON = 4 << 20

Opener = Callable[[str], IO[bytes] | None]  # a file inside the layout/archive, or None


def host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return "linux", arch


def _json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KrateError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise KrateError(f"{what} is not a JSON object")
    return doc


def _default_name(path: Path) -> str:
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return _NAME_CHARS.sub("-", stem.lower()).strip("-._") or "image"


def import_path(store, paths: Paths, path: Path, ref: str | None = None) -> list[Image]:
    """Import whatever `path` is; returns the images recorded (unpacked already)."""
    if not os.path.lexists(path):
        raise KrateError(f"{path} does not exist")
    if path.is_dir():
        if (path / "oci-layout").is_file():
            return _from_layout(store, paths, _folder_opener(path), _default_name(path), ref)
        return [_from_rootfs(store, paths, path, ref)]
    if not path.is_file():
        raise KrateError(f"{path} is not a file or folder")
    try:
        tar = tarfile.open(path)  # noqa: SIM115 (closed by the with-block below)
    except tarfile.TarError as exc:
        raise KrateError(
            f"{path} is not a tar archive; give a `docker save` tar, an OCI layout or a folder"
        ) from exc
    except OSError as exc:
        raise KrateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with tar:
        names = set(tar.getnames())
        opener = _tar_opener(tar)
        if "manifest.json" in names:
            return _from_docker_archive(store, paths, opener, ref)
        if "oci-layout" in names and "index.json" in names:
            return _from_layout(store, paths, opener, _default_name(path), ref)
    raise KrateError(
        f"{path} is neither a `docker save` archive (no manifest.json) nor an OCI image "
        "layout (no oci-layout/index.json); to import a root filesystem, give its folder"
    )


def _folder_opener(folder: Path) -> Opener:
    def open_(name: str) -> IO[bytes] | None:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            return None
        try:
            fd = os.open(folder.joinpath(*parts), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        return open(fd, "rb")

    return open_


def _tar_opener(tar: tarfile.TarFile) -> Opener:
    def open_(name: str) -> IO[bytes] | None:
        name = name[2:] if name.startswith("./") else name
        for candidate in (name, f"./{name}"):
            try:
                member = tar.getmember(candidate)
            except KeyError:
                continue
            if member.isreg():
                return tar.extractfile(member)
            return None
        return None

    return open_


def _read_small(opener: Opener, name: str) -> bytes:
    stream = opener(name)
    if stream is None:
        raise KrateError(f"the archive has no {name}")
    with stream:
        data = stream.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise KrateError(f"{name} in the archive is too large")
    return data


def _store_blob(paths: Paths, opener: Opener, desc: dict[str, Any]) -> str:
    digest = desc.get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise KrateError(f"a descriptor names an unsupported digest {digest!r}")
    if blobs.has(paths, digest):
        return digest
    stream = opener(f"blobs/sha256/{digest[7:]}")
    if stream is None:
        raise KrateError(f"the layout lacks blob {digest}")
    size = desc.get("size")
    with stream:
        blobs.put_stream(paths, stream, digest=digest, size=size if isinstance(size, int) else None)
    return digest


def _from_layout(store, paths: Paths, opener: Opener, name: str, ref: str | None) -> list[Image]:
    index = _json(_read_small(opener, "index.json"), "index.json")
    found: list[tuple[str | None, dict]] = []
    for desc in index.get("manifests") or []:
        if not isinstance(desc, dict):
            continue
        tag = (desc.get("annotations") or {}).get(REF_NAME)
        if desc.get("mediaType") in INDEXES:
            _store_blob(paths, opener, desc)
            nested = _json(blobs.read_bytes(paths, desc["digest"]), "an image index")
            chosen = _pick_platform(nested.get("manifests") or [])
            if chosen is not None:
                found.append((tag, chosen))
        else:
            found.append((tag, desc))
    if not found:
        raise KrateError("the OCI layout names no image manifest for this platform")
    if ref and len(found) > 1:
        raise KrateError(f"the layout holds {len(found)} images; --ref names only one")
    images = []
    for tag, desc in found:
        manifest_digest = _store_blob(paths, opener, desc)
        manifest = _json(blobs.read_bytes(paths, manifest_digest), f"manifest {manifest_digest}")
        config_digest = _store_blob(paths, opener, manifest.get("config") or {})
        layers = [_store_blob(paths, opener, layer) for layer in manifest.get("layers") or []]
        image_ref = ref or _ref_from_tag(name, tag) or f"{name}:latest"
        images.append(
            _record(store, paths, image_ref, manifest_digest, config_digest, layers, "oci-layout")
        )
    return images


def _ref_from_tag(name: str, tag: str | None) -> str | None:
    if not tag:
        return None
    if "/" in tag or ":" in tag:
        return tag
    return f"{name}:{tag}"


def _pick_platform(descriptors: list) -> dict | None:
    want_os, want_arch = host_platform()
    for desc in descriptors:
        if not isinstance(desc, dict):
            continue
        plat = desc.get("platform") or {}
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            return desc
    return None


def _from_docker_archive(store, paths: Paths, opener: Opener, ref: str | None) -> list[Image]:
    entries = json.loads(_read_small(opener, "manifest.json"))
    if not isinstance(entries, list) or not entries:
        raise KrateError("manifest.json of the archive lists no image")
    if ref and len(entries) > 1:
        raise KrateError(f"the archive holds {len(entries)} images; --ref names only one")
    images = []
    for entry in entries:
        config_digest = _put_named(paths, opener, entry.get("Config"))
        layers = [_put_named(paths, opener, name) for name in entry.get("Layers") or []]
        manifest_digest = blobs.put_bytes(paths, _manifest_of(paths, config_digest, layers)).digest
        tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        refs = [ref] if ref else tags or [config_digest]
        for name in refs:
            images.append(
                _record(
                    store, paths, name, manifest_digest, config_digest, layers, "docker-archive"
                )
            )
    return images


def _put_named(paths: Paths, opener: Opener, name: Any) -> str:
    if not isinstance(name, str):
        raise KrateError("manifest.json of the archive names a file badly")
    stream = opener(name)
    if stream is None:
        raise KrateError(f"the archive lacks {name}")
    with stream:
        return blobs.put_stream(paths, stream).digest


def _from_rootfs(store, paths: Paths, folder: Path, ref: str | None) -> Image:
    """A root filesystem folder becomes one uncompressed layer, never following a link."""
    parent = paths.artifacts_dir
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=parent) as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(os.listdir(folder)):
                tar.add(folder / child, arcname=child, recursive=True)
        spool.seek(0)
        layer = blobs.put_stream(paths, spool).digest
    os_name, arch = host_platform()
    config = {
        "architecture": arch,
        "os": os_name,
        "config": {"Env": [DEFAULT_PATH]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }
    config_digest = blobs.put_bytes(paths, json.dumps(config, sort_keys=True).encode()).digest
    manifest_digest = blobs.put_bytes(paths, _manifest_of(paths, config_digest, [layer])).digest
    image_ref = ref or f"{_default_name(folder)}:latest"
    return _record(store, paths, image_ref, manifest_digest, config_digest, [layer], "rootfs")


def _manifest_of(paths: Paths, config_digest: str, layers: list[str]) -> bytes:
    def desc(digest: str, media_type: str) -> dict:
        size = blobs.path(paths, digest).stat().st_size
        return {"mediaType": media_type, "digest": digest, "size": size}

    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config_digest, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc(d, "application/vnd.oci.image.layer.v1.tar") for d in layers],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _record(
    store,
    paths: Paths,
    ref: str,
    manifest_digest: str | None,
    config_digest: str,
    layers: list[str],
    source: str,
) -> Image:
    """Unpack first (a layer that cannot be unpacked is refused before anything is recorded)."""
    probe = Image(ref, config_digest, manifest_digest, layers, {}, None, source)
    roots.ensure(paths, probe)
    return catalog.add(
        store,
        ref=ref,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=layers,
        source=source,
        paths=paths,
    )
