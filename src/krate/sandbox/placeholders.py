"""Placeholders: names that must not be created during a run, held by a read-only mount.

bubblewrap can keep a path read-only only by mounting over it, and a mount needs
something to mount on: in a writable folder, a name that does not exist can be
created by the workload (`.git/commondir`, `.git/hooks`). For the few names where
that means code execution outside the sandbox, krate makes a harmless placeholder
first and the backend mounts it read-only.

Most placeholders stay: an empty folder or an empty file that git treats exactly
as a missing one (`hooks/`, `modules/`, `config.worktree`), made once. A `commondir`
naming the git folder itself is harmless too, but git then prints an absolute
`--git-common-dir`, so it exists only while a run needs it: runs that share it hold
a shared lock on a file in krate's data folder (hidden from workloads, so no
workload can hold or break it), and the last one takes the lock exclusively and
removes it. The lock file names the placeholder while it exists, so one left by a
killed krate is removed by the next run's `sweep`. Uses `fcntl.flock`: nothing in
the standard library or the dependencies does this bookkeeping.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from krate import sha
from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.records import NamedTuple

LOCKS = "placeholders"


class Pin(NamedTuple):
    """A name to hold for the run: an empty folder, or a file with `content`."""

    path: Path
    folder: bool = False
    content: bytes = b""
    keep: bool = True  # False: removed after the run (when no other run holds it)


@contextlib.contextmanager
def held(pins: Iterable[Pin], data_dir: Path) -> Iterator[set[Path]]:
    """Make each missing placeholder, for the duration of the block.

    Yields the paths that could not be made (a folder krate's user cannot write,
    which the workload cannot write either): there is nothing to mount over there.
    """
    absent: set[Path] = set()
    taken: list[tuple[int, Pin]] = []
    try:
        for pin in pins:
            if not pin.keep:
                taken.append((_lock_shared(data_dir, pin), pin))
            if not _create(pin):
                absent.add(pin.path)
        yield absent
    finally:
        for fd, pin in reversed(taken):
            _release(fd, pin)


def sweep(data_dir: Path) -> None:
    """Remove placeholders a killed krate left behind (their lock file names them; nobody
    holds it)."""
    try:
        entries = [e for e in os.scandir(data_dir / LOCKS) if e.stat().st_size]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pin = _read_pin(fd)
            if pin is not None:
                _remove(pin)
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a run in progress holds it
        finally:
            os.close(fd)


def _lock_shared(data_dir: Path, pin: Pin) -> int:
    """A shared lock on this placeholder's lock file, which names it while it is held."""
    folder = data_dir / LOCKS
    lock = folder / sha.hexdigest(os.fsencode(pin.path))[:32]
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(lock, flags, 0o600)
        except FileNotFoundError:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock, flags, 0o600)
    except OSError as exc:
        raise KrateError(
            f"cannot use {folder}: {exc.strerror or exc}", exit_code=EXIT_KRATE_FAILED
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        description = _describe(pin)
        os.pwrite(fd, description, 0)  # every holder writes the same bytes
        os.ftruncate(fd, len(description))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int, pin: Pin) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)  # another run still holds it: the last one removes the placeholder
        return
    try:
        _remove(pin)
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe(pin: Pin) -> bytes:
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
