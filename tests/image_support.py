"""Small real images built in the tests: busybox-static from Debian's package, layers with
whiteouts, a hostile layer, written as OCI layouts and `docker save` archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (scripts/install --dev)
APPLETS = ("sh", "ls", "cat", "id", "env", "pwd", "echo", "true", "false", "touch", "rm",
           "mkdir", "stat", "wget", "nc", "sleep", "readlink", "test", "grep")  # fmt: skip
MTIME = 1_700_000_000


def entry(name: str, *, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, mode=0o644,
          link: str = "", uid: int = 0, gid: int = 0, major: int = 0, minor: int = 0):  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    info.devmajor, info.devminor = major, minor
    if data is not None:
        info.size = len(data)
    return info, data


def d(name: str, mode=0o755, **kw):
    return entry(name, kind=tarfile.DIRTYPE, mode=mode, **kw)


def f(name: str, data: bytes = b"", mode=0o644, **kw):
    return entry(name, data=data, mode=mode, **kw)


def sym(name: str, target: str):
    return entry(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name: str, target: str):
    return entry(name, kind=tarfile.LNKTYPE, link=target)


def layer(entries, *, compress: bool = True) -> bytes:
    """A tar (gzip by default) of `entries`, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def busybox_layer(*, compress: bool = True) -> bytes:
    entries = [d("bin"), f("bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    entries += [sym(f"bin/{name}", "busybox") for name in APPLETS]
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    entries += [d("etc"), f("etc/passwd", passwd), d("tmp", 0o1777), d("root", 0o700),
                d("home"), d("home/app", uid=1000, gid=1000), d("srv")]  # fmt: skip
    return layer(entries, compress=compress)


def diff_id(blob: bytes) -> str:
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config(layers: list[bytes], *, env=None, cmd=None, entrypoint=None, workdir=None,
           user=None, arch: str = "amd64") -> bytes:  # fmt: skip
    section: dict = {"Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin"]}
    for key, value in (("Cmd", cmd), ("Entrypoint", entrypoint), ("WorkingDir", workdir),
                       ("User", user)):  # fmt: skip
        if value is not None:
            section[key] = value
    doc = {
        "created": "2026-01-02T03:04:05Z",
        "architecture": arch,
        "os": "linux",
        "config": section,
        "rootfs": {"type": "layers", "diff_ids": [diff_id(b) for b in layers]},
    }
    return json.dumps(doc, sort_keys=True).encode()


def manifest(layers: list[bytes], cfg: bytes) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(cfg),
            "size": len(cfg),
        },  # fmt: skip
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar"
                + ("+gzip" if b[:2] == b"\x1f\x8b" else ""),
                "digest": sha(b),
                "size": len(b),
            }
            for b in layers
        ],  # fmt: skip
    }
    return json.dumps(doc, sort_keys=True).encode()


def oci_layout(folder: Path, layers: list[bytes], cfg: bytes, ref: str | None = "1.0") -> str:
    """An OCI image layout in `folder`; returns the manifest digest."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    man = manifest(layers, cfg)
    for blob in [*layers, cfg, man]:
        (blobs / sha(blob)[7:]).write_bytes(blob)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man),
            "size": len(man)}  # fmt: skip
    if ref:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [desc]}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))
    return sha(man)


def tar_folder(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=child.name)
    return out


def docker_archive(out: Path, layers: list[bytes], cfg: bytes, tags: list[str]) -> Path:
    """A `docker save` archive: uncompressed layers, manifest.json with RepoTags."""
    raw_layers = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in layers]
    with tarfile.open(out, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))

        names = []
        for raw in raw_layers:
            name = f"{hashlib.sha256(raw).hexdigest()}/layer.tar"
            add(name, raw)
            names.append(name)
        cfg_name = f"{hashlib.sha256(cfg).hexdigest()}.json"
        add(cfg_name, cfg)
        add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": tags,
                                          "Layers": names}]).encode())  # fmt: skip
    return out
