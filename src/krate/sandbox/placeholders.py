"""Placeholders: names that must not be created during a run, held by a read-only mount.

bubblewrap can keep a path read-only only by mounting over it, and a mount needs
something to mount on: in a writable folder, a name that does not exist can be
created by the workload (`.git/commondir`, `.git/hooks`). For the few names where
that means code execution outside the sandbox, krate creates a harmless
placeholder first (an empty folder; a `commondir` that names the git folder
itself; an empty `config`), the backend mounts it read-only, and krate removes it
after the run when it is still the placeholder and no other run uses it.

Runs that share a placeholder hold a shared lock on a file in krate's data folder
(hidden from workloads, so no workload can hold or break it); the last run takes
the lock exclusively and removes the placeholder. A placeholder left by a killed
krate is harmless and is removed by the next run that sweeps the lock folder.
Uses `fcntl.flock` (nothing in the standard library or the dependencies does
this bookkeeping).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from krate.errors import EXIT_KRATE_FAILED, KrateError

LOCKS = "placeholders"


class Pin(NamedTuple):
    """A name to hold for the run: an empty folder, or a file with `content`."""

    path: Path
    folder: bool = False
    content: bytes = b""


@contextlib.contextmanager
def held(pins: Iterable[Pin], data_dir: Path) -> Iterator[set[Path]]:
    """Create each placeholder that is missing, for the duration of the block.

    Yields the paths that could not be created (a folder krate's user cannot write,
    which the workload cannot write either): there is nothing to mount over there.
    """
    pins = list(pins)
    if not pins:
        yield set()
        return
    folder = data_dir / LOCKS
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KrateError(
            f"cannot use {folder}: {exc.strerror or exc}", exit_code=EXIT_KRATE_FAILED
        ) from None
    taken: list[tuple[int, Path, Pin]] = []
    absent: set[Path] = set()
    try:
        for pin in pins:
            fd, lock = _lock_shared(folder, pin)
            taken.append((fd, lock, pin))
            if not _create(pin):
                absent.add(pin.path)
        yield absent
    finally:
        for fd, lock, pin in reversed(taken):
            _release(fd, lock, pin)


def sweep(data_dir: Path) -> None:
    """Remove placeholders a killed krate left behind (nobody holds their lock)."""
    try:
        entries = list(os.scandir(data_dir / LOCKS))
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a run in progress holds it
        pin = _read_pin(fd)
        if pin is not None:
            _remove(pin)
        _drop(fd, Path(entry.path))


def _describe(pin: Pin) -> bytes:
    """What a lock file holds, so that `sweep` knows what it may remove: kind, content, path."""
    kind = b"dir" if pin.folder else b"file"
    return kind + b"\n" + pin.content.hex().encode() + b"\n" + os.fsencode(pin.path)


def _read_pin(fd: int) -> Pin | None:
    try:
        kind, content, path = os.pread(fd, 8192, 0).split(b"\n", 2)
        if kind in (b"dir", b"file") and path.startswith(b"/"):
            return Pin(Path(os.fsdecode(path)), kind == b"dir", bytes.fromhex(content.decode()))
    except (OSError, ValueError):
        pass
    return None


def _lock_shared(folder: Path, pin: Pin) -> tuple[int, Path]:
    """A shared lock on this path's lock file (created when missing), which names the pin."""
    lock = folder / hashlib.sha256(os.fsencode(pin.path)).hexdigest()[:32]
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # The last run may have removed this lock file while we waited: start again.
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                raise FileNotFoundError(lock)
            os.pwrite(fd, _describe(pin), 0)  # every holder writes the same bytes
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return fd, lock


def _create(pin: Pin) -> bool:
    """Make the placeholder unless something is there already; False when it cannot be made."""
    try:
        if pin.folder:
            os.mkdir(pin.path, 0o755)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(pin.path, flags, 0o644)
            try:
                os.write(fd, pin.content)
            finally:
                os.close(fd)
    except FileExistsError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            return False
        raise
    if os.geteuid() == 0:
        # Root making a placeholder in someone's repository: give it to the folder's owner.
        with contextlib.suppress(OSError):
            parent = os.stat(pin.path.parent)
            os.lchown(pin.path, parent.st_uid, parent.st_gid)
    return True


def _release(fd: int, lock: Path, pin: Pin) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)  # another run still holds it: the last one removes the placeholder
        return
    _remove(pin)
    _drop(fd, lock)


def _drop(fd: int, lock: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock)
    os.close(fd)


def _remove(pin: Pin) -> None:
    """Remove the placeholder if it is still one (an empty folder, or the exact content)."""
    with contextlib.suppress(OSError):
        st = os.lstat(pin.path)
        if pin.folder:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(pin.path)  # fails when not empty: then it is not only ours any more
            return
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(pin.content):
            return
        with open(pin.path, "rb") as f:
            if f.read(len(pin.content) + 1) == pin.content:
                os.unlink(pin.path)
