"""Image blobs (manifests, configs, layers) in the one content-addressed store.

They share `<data>/artifacts/sha256/<hex>` with build outputs (provenance/store.py), so a
layer that is also a build output is stored once. `put_stream` is the pull client's way
in: it hashes while it writes a temp file and links the blob into place only when the
digest (and size) it was promised match, so a mismatch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from krate.errors import KrateError
from krate.paths import Paths
from krate.provenance.store import (
    BLOB_MODE,
    BUFFER_SIZE,
    TEMP_PREFIX,
    ArtifactStore,
    Stored,
    _fsync_dir,
    split_digest,
)


class DigestMismatch(KrateError):
    """A blob's bytes do not hash to (or are not the size of) what its descriptor promised."""


def store_of(paths: Paths) -> ArtifactStore:
    return ArtifactStore(paths.artifacts_dir)


def path(paths: Paths, digest: str) -> Path:
    """Where the blob `sha256:<hex>` lives (whether or not it is there)."""
    return store_of(paths).path_for(digest)


def has(paths: Paths, digest: str) -> bool:
    return store_of(paths).has(digest)


def read_bytes(paths: Paths, digest: str, *, limit: int = 16 << 20) -> bytes:
    """A small blob (manifest, config), re-hashed: a changed blob is refused, not trusted."""
    hex_digest = split_digest(digest)
    try:
        fd = os.open(path(paths, digest), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KrateError(f"blob sha256:{hex_digest} is missing from the store") from None
    with open(fd, "rb") as reader:
        data = reader.read(limit + 1)
    if len(data) > limit:
        raise KrateError(f"blob sha256:{hex_digest} is larger than {limit} bytes")
    if hashlib.sha256(data).hexdigest() != hex_digest:
        raise KrateError(f"blob sha256:{hex_digest} in the store is corrupt; re-import the image")
    return data


def put_bytes(paths: Paths, data: bytes, *, digest: str | None = None) -> Stored:
    import io

    return put_stream(paths, io.BytesIO(data), digest=digest, size=len(data) if digest else None)


def put_stream(
    paths: Paths, stream: BinaryIO, *, digest: str | None = None, size: int | None = None
) -> Stored:
    """Copy `stream` (anything with `read(n)`) into the store, hashing as it goes.

    With `digest` (and `size`), the bytes must match or DigestMismatch is raised and
    nothing is stored. An existing blob is never replaced (a second copy is discarded).
    """
    want = split_digest(digest) if digest is not None else None
    store = store_of(paths)
    store._ensure_dirs()
    tmp_fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=store.root)
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        written = 0
        with open(tmp_fd, "wb", buffering=0) as writer:
            while chunk := stream.read(BUFFER_SIZE):
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[writer.write(view) :]
                written += len(chunk)
                if size is not None and written > size:
                    raise DigestMismatch(
                        f"blob {digest} is larger than the {size} bytes promised; nothing kept"
                    )
            os.fchmod(writer.fileno(), BLOB_MODE)
            os.fsync(writer.fileno())
        got = hasher.hexdigest()
        if size is not None and written != size:
            raise DigestMismatch(
                f"blob {digest} has {written} bytes, {size} promised; nothing kept"
            )
        if want is not None and got != want:
            raise DigestMismatch(
                f"digest mismatch: blob {digest} hashes to sha256:{got}; nothing kept"
            )
        new = store._link_into_place(tmp, store.root / got)
    except OSError as exc:
        raise KrateError(
            f"cannot write to the blob store {store.root}: {exc.strerror or exc}; "
            "check free space and the folder's permissions"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if new:
        _fsync_dir(store.root)
    return Stored(got, written, new)
