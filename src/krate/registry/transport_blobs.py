"""The registry transport's blob writer: a download into krate's store, checked as it streams.

Part of the transport helper (transport.py), loaded by its exact file; standard
library only. `Receiver` streams one blob's body into a temp file beside its final
name (`.tmp-pull-<pid>-*`, which krate removes if this process dies) while its
sha256 and size are checked, and `BlobDir.settle` links it into place (0400, fsynced,
never replacing a stored blob) only when both match what the manifest promised: a
mismatch, a short read or an interruption leaves nothing behind.

Why one thread per download, not two: reading the socket, hashing and writing
each release the GIL, and a pull already downloads up to three layers at once
(transport_pull.PARALLEL), which keeps two cores busy. A reader thread handing
buffers to a hash-and-write thread per download measured slower on two shared
cores (bench/bench_pull.py, docs/images.md): six threads and their hand-offs
competing for the same CPUs. Each download reads 1 MiB straight into one buffer
(no copy beyond the kernel's), hashes it and writes it, in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time

from krate.registry.transport_http import Failure, emit

BUFFER = 1 << 20
SYNC_STEP = 16 << 20  # written bytes between two early flushes to disk
TEMP_PREFIX = ".tmp-pull-"  # krate's stale-temp sweep removes `.tmp-*` left by a killed pull
# Created, never opened: not through a link planted under the name, not inherited.
TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def local(exc: OSError) -> Failure:
    return Failure("local", f"cannot write to krate's store: {exc.strerror or exc}")


class BlobDir:
    """The store's `sha256/` folder, as the transport writes into it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.linked = False

    def path(self, digest: str) -> str:
        return os.path.join(self.root, digest.partition(":")[2])

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def temp(self) -> tuple[int, str]:
        """A new, empty 0600 file of this process's (as `tempfile.mkstemp`, whose module,
        with shutil and random, costs some 2 ms of the transport's start; krate waits for it)."""
        for _ in range(100):
            name = os.path.join(self.root, f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")
            try:
                return os.open(name, TEMP_FLAGS, 0o600), name
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temporary name in {self.root}")

    def settle(self, fd: int, tmp: str, digest: str) -> None:
        """Read-only, durable, linked under its digest (an existing blob is never replaced)."""
        os.fchmod(fd, 0o400)
        os.fsync(fd)
        target = self.path(digest)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        except OSError:
            if not os.path.exists(target):
                os.replace(tmp, target)
        self.linked = True

    def put(self, digest: str, data: bytes) -> bool:
        """A small blob already checked (a manifest); False when it was there."""
        if self.has(digest):
            return False
        fd, tmp = self.temp()
        try:
            with open(fd, "wb", buffering=0, closefd=False) as out:
                out.write(data)
            self.settle(fd, tmp, digest)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def sync(self) -> None:
        if not self.linked:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class _EarlySync:
    """Has the disk start on a blob while it still streams: every SYNC_STEP written bytes an
    fdatasync in a thread of its own (one at a time), so the fsync that settles the blob
    waits only for its tail instead of the whole blob after its last byte arrived."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.unsynced = 0
        self.syncer: threading.Thread | None = None

    def written(self, n: int) -> None:
        self.unsynced += n
        if self.unsynced < SYNC_STEP or (self.syncer is not None and self.syncer.is_alive()):
            return
        self.unsynced = 0
        self.syncer = threading.Thread(target=_datasync, args=(self.fd,), daemon=True)
        self.syncer.start()

    def join(self) -> None:
        if self.syncer is not None:
            self.syncer.join()  # before the descriptor is closed


def _datasync(fd: int) -> None:
    with contextlib.suppress(OSError):  # only a head start: settle's fsync is the one that counts
        os.fdatasync(fd)


class Receiver:
    """Streams one blob's body into a temp file, hashing and counting as it goes."""

    def __init__(self, store: BlobDir, digest: str, size: int) -> None:
        self.store, self.digest, self.size = store, digest, size
        self.received = 0
        self._progress_at = 0.0

    def __call__(self, resp) -> None:
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) != self.size:
            raise self.mismatch(f"the registry sends {length} bytes, the manifest promised")
        try:
            fd, tmp = self.store.temp()
        except OSError as exc:
            raise local(exc) from None
        try:
            got = self._copy(resp, fd)
            if got != self.digest:
                raise self.mismatch(f"the bytes received hash to {got}; the manifest promised")
            try:
                self.store.settle(fd, tmp, self.digest)
            except OSError as exc:
                raise local(exc) from None
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _copy(self, resp, fd: int) -> str:
        """Body -> file; network errors propagate (retried), local ones are a Failure."""
        hasher = hashlib.sha256()
        view = memoryview(bytearray(BUFFER))
        early = _EarlySync(fd)
        left = self.size
        try:
            while n := resp.readinto(view[: min(BUFFER, left + 1)]):
                if n > left:
                    raise self.mismatch("the registry sends more than the")
                chunk = view[:n]
                hasher.update(chunk)
                try:
                    while chunk:
                        chunk = chunk[os.write(fd, chunk) :]
                except OSError as exc:
                    raise local(exc) from None
                early.written(n)
                left -= n
                self.received += n
                self._progress()
        finally:
            early.join()
        if left:
            sent = self.size - left
            raise self.mismatch(f"the registry sent {sent} bytes, the manifest promised")
        return "sha256:" + hasher.hexdigest()

    def _progress(self) -> None:
        moment = time.monotonic()
        if moment - self._progress_at >= 0.1 or self.received == self.size:
            self._progress_at = moment
            emit("progress", digest=self.digest, done=self.received, total=self.size)

    def mismatch(self, what: str) -> Failure:
        return Failure(
            "digest_mismatch",
            f"blob {self.digest[:19]} failed its check: {what} {self.size} bytes "
            f"({self.digest}); nothing of it was kept",
        )
