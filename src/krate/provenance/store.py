"""The content-addressed artifact store: `<data_dir>/artifacts/sha256/<hex>`.

Why its own code: the copy must be hashed in the same pass (constant memory, one
read of a possibly large output), land atomically (temp file in the same folder,
fsync, link into place, fsync the folder) and never replace a stored blob, which
no library here does together. A stored file is never modified: it is made
read-only (0400) in a 0700 folder. This module never follows symbolic links when
reading outputs (a workload could plant one pointing at the user's secrets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from krate.errors import KrateError
from krate.paths import ensure_private_dir

ALGORITHM = "sha256"
BUFFER_SIZE = 1 << 20  # 1 MiB: large enough for full hashing speed, small enough to stay constant
BLOB_MODE = 0o400
TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 24 * 3600  # a temp file untouched this long belongs to a krate that died
_HEX = re.compile(r"^[0-9a-f]{64}$")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # open flags for outputs: never follow a link,
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # never hang on a planted FIFO


@dataclass(frozen=True)
class Stored:
    """One blob in the store: its digest, size, and whether this call wrote it."""

    hex: str
    size: int
    new: bool

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self.hex}"

    def to_dict(self) -> dict:
        return {"digest": self.digest, **asdict(self)}


def split_digest(digest: str) -> str:
    """`sha256:<hex>` or bare hex -> the 64 lowercase hex digits, or raise KrateError."""
    text = digest.strip()
    if text.lower().startswith(f"{ALGORITHM}:"):
        text = text[len(ALGORITHM) + 1 :]
    text = text.lower()
    if not _HEX.match(text):
        raise KrateError(f"{digest!r} is not a sha256 digest (expected sha256:<64 hex digits>)")
    return text


def open_regular(path: Path) -> int:
    """Open `path` for reading without following a symbolic link; only regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK)
    except OSError as exc:
        if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "EMLINK", 31)):
            raise KrateError(f"{path} is a symbolic link; krate does not follow links") from exc
        raise KrateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KrateError(f"{path} is not a regular file")
    return fd


def hash_fd(fd: int) -> tuple[str, int]:
    """sha256 and size of everything readable from `fd`, in constant memory."""
    digest = hashlib.sha256()
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    size = 0
    with open(fd, "rb", buffering=0, closefd=False) as reader:
        while n := reader.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def hash_file(path: Path) -> tuple[str, int]:
    fd = open_regular(path)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Blobs named by their sha256 under `<artifacts_dir>/sha256/`."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.artifacts_dir = artifacts_dir
        self.root = artifacts_dir / ALGORITHM

    def path_for(self, hex_digest: str) -> Path:
        return self.root / split_digest(hex_digest)

    def has(self, hex_digest: str) -> bool:
        return self.path_for(hex_digest).is_file()

    def _ensure_dirs(self) -> None:
        ensure_private_dir(self.artifacts_dir)
        ensure_private_dir(self.root)

    def put_file(self, source: Path) -> Stored:
        """Copy `source` (a regular file, never a link) into the store; dedup by content."""
        fd = open_regular(source)
        try:
            return self.put_fd(fd)
        finally:
            os.close(fd)

    def put_fd(self, source_fd: int) -> Stored:
        """Stream `source_fd` into a temp file while hashing, then link it under its digest.

        The digest is of the bytes written, so what is stored is what is named even if
        the source changes while it is read. An existing blob is never replaced.
        """
        self._ensure_dirs()
        tmp_fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        tmp = Path(tmp_name)
        try:
            with (
                open(source_fd, "rb", buffering=0, closefd=False) as reader,
                open(tmp_fd, "wb", buffering=0) as writer,
            ):
                hex_digest, size = _copy_hashing(reader, writer)
                os.fchmod(writer.fileno(), BLOB_MODE)
                os.fsync(writer.fileno())
            new = self._link_into_place(tmp, self.root / hex_digest)
        except OSError as exc:
            raise KrateError(
                f"cannot write to the artifact store {self.root}: {exc.strerror or exc}; "
                "check free space and the folder's permissions"
            ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if new:
            _fsync_dir(self.root)
        return Stored(hex_digest, size, new)

    def _link_into_place(self, tmp: Path, target: Path) -> bool:
        """True when `target` was created now; False when the same content was already there."""
        if target.exists():
            return False
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False  # another krate stored the same content meanwhile
        except OSError:
            # Filesystems without hard links: rename is still atomic; the content is identical
            # to anything a racing writer puts there, so losing that race changes nothing.
            if target.exists():
                return False
            os.replace(tmp, target)
        return True

    def check(self, hex_digest: str, size: int | None = None) -> str | None:
        """None when the blob is present and hashes to its name; else what is wrong."""
        path = self.path_for(hex_digest)
        try:
            fd = os.open(path, os.O_RDONLY | NOFOLLOW)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        try:
            actual, actual_size = hash_fd(fd)
        finally:
            os.close(fd)
        if actual != split_digest(hex_digest):
            return f"content changed (now hashes to sha256:{actual})"
        if size is not None and actual_size != size:
            return f"size changed ({actual_size} bytes, recorded {size})"
        return None

    def export(self, hex_digest: str, dest: Path) -> Stored:
        """Copy a blob to `dest`, which must not exist; the copy is re-hashed on the way.

        Written to a temp file beside `dest` and linked into place, so an existing file
        is never overwritten (not even one created meanwhile) and a failure leaves nothing.
        """
        hex_digest = split_digest(hex_digest)
        if os.path.lexists(dest):
            raise KrateError(
                f"{dest} already exists; krate does not overwrite: choose another --out"
            )
        folder = dest.parent if str(dest.parent) else Path(".")
        if not folder.is_dir():
            raise KrateError(f"folder {folder} does not exist; create it first")
        src = self.path_for(hex_digest)
        try:
            src_fd = os.open(src, os.O_RDONLY | NOFOLLOW)
        except FileNotFoundError:
            raise KrateError(
                f"sha256:{hex_digest} is recorded but missing from the store {self.root}; "
                "run `krate artifacts verify`"
            ) from None
        try:
            tmp_fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.krate-", dir=folder)
        except OSError as exc:
            os.close(src_fd)
            raise KrateError(f"cannot write in {folder}: {exc.strerror or exc}") from exc
        tmp = Path(tmp_name)
        try:
            with (
                open(src_fd, "rb", buffering=0) as reader,
                open(tmp_fd, "wb", buffering=0) as writer,
            ):
                copied, size = _copy_hashing(reader, writer)
                # A normal file for the user, as `cp` would create it (umask applies).
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(writer.fileno(), 0o666 & ~umask)
                os.fsync(writer.fileno())
            if copied != hex_digest:
                raise KrateError(
                    f"the stored copy of sha256:{hex_digest} is corrupt (it hashes to "
                    f"sha256:{copied}); nothing was exported"
                )
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise KrateError(
                    f"{dest} already exists; krate does not overwrite: choose another --out"
                ) from None
        except OSError as exc:
            raise KrateError(f"cannot export to {dest}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return Stored(hex_digest, size, True)

    def sweep_temps(self, older_than_s: float = STALE_TEMP_S) -> list[str]:
        """Remove temp files that a killed krate left behind (old enough not to be in use)."""
        import time

        removed: list[str] = []
        limit = time.time() - older_than_s
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed

    def blobs(self) -> Iterator[str]:
        """Hex names of the stored blobs (temp files of unfinished writes excluded)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if _HEX.match(name):
                yield name


def _copy_hashing(reader, writer) -> tuple[str, int]:
    """Copy reader to writer through one buffer; the SHA-256 (hex) and size of what was written."""
    digest = hashlib.sha256()
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    size = 0
    while n := reader.readinto(buf):
        chunk = view[:n]
        digest.update(chunk)
        _write_all(writer, chunk)
        size += n
    return digest.hexdigest(), size


def _write_all(writer, chunk: memoryview) -> None:
    while chunk:
        written = writer.write(chunk)
        chunk = chunk[written:]


def _fsync_dir(path: Path) -> None:
    """Make the new directory entry durable (not possible on every platform; best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
