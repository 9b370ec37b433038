"""Paths inside an image root, resolved as the sandbox will see them, never on the host.

An image's `etc/passwd` or `bin/sh` may be a symbolic link to an absolute path: followed on
the host, it would read the host's file. Every component is opened with O_NOFOLLOW from a
directory descriptor; a link met on the way is followed inside the root (an absolute target
restarts at the root, `..` stops at it). Used by the unpacker and by `krate run IMAGE` (no
heavy imports: it is on the run path).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from krate.errors import KrateError

MAX_LINK_HOPS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Root:
    """The root folder, walked only through directory descriptors."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def reopen(self, stack: list[str]) -> int:
        fd = os.dup(self.fd)
        for name in stack:
            nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def walk(self, parts: list[str], *, create: bool, made: dict) -> tuple[int, list[str]] | None:
        """Open the folder `parts` names, following links inside the root; None if absent.

        With `create`, missing folders are made (mode 0755 unless a layer says otherwise,
        noted in `made`) and a non-folder in the way is replaced.
        """
        stack: list[str] = []
        fd = os.dup(self.fd)
        todo = list(parts)
        hops = 0
        try:
            while todo:
                name = todo.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if stack:
                        stack.pop()
                        os.close(fd)
                        fd = self.reopen(stack)
                    continue
                try:
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(name, 0o700, dir_fd=fd)
                    made.setdefault((*stack, name), (0o755, 0, 0, None))
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        hops += 1
                        if hops > MAX_LINK_HOPS:
                            raise KrateError(
                                "too many levels of symbolic links in a layer"
                            ) from None
                        target = os.readlink(name, dir_fd=fd)
                        if target.startswith("/"):
                            stack = []
                            os.close(fd)
                            fd = os.dup(self.fd)
                        todo = target.split("/") + todo
                        continue
                    if not create:
                        os.close(fd)
                        return None
                    os.unlink(name, dir_fd=fd)
                    os.mkdir(name, 0o700, dir_fd=fd)
                    made.setdefault((*stack, name), (0o755, 0, 0, None))
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                stack.append(name)
        except BaseException:
            os.close(fd)
            raise
        return fd, stack


def lookup(rootfs: Path, path: str) -> tuple[os.stat_result, str] | None:
    """(stat, resolved path) of `path` in `rootfs`, a last link followed too; None if absent."""
    root = Root(rootfs)
    try:
        parts = [p for p in path.split("/") if p]
        for _ in range(MAX_LINK_HOPS):
            if not parts:
                return os.fstat(root.fd), "/"
            opened = root.walk(parts[:-1], create=False, made={})
            if opened is None:
                return None
            fd, stack = opened
            try:
                try:
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                if not stat.S_ISLNK(st.st_mode):
                    return st, "/" + "/".join([*stack, parts[-1]])
                target = os.readlink(parts[-1], dir_fd=fd)
            finally:
                os.close(fd)
            base = [] if target.startswith("/") else stack
            parts = [*base, *[p for p in target.split("/") if p]]
        return None
    finally:
        root.close()


def read_text(rootfs: Path, path: str, limit: int = 1 << 20) -> str | None:
    """A small file of the image (its passwd, group), or None when it has none."""
    found = lookup(rootfs, path)
    if found is None or not stat.S_ISREG(found[0].st_mode):
        return None
    root = Root(rootfs)
    try:
        parts = [p for p in found[1].split("/") if p]
        opened = root.walk(parts[:-1], create=False, made={})
        if opened is None:
            return None
        fd, _ = opened
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        with open(file_fd, "rb") as reader:
            return reader.read(limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        root.close()
