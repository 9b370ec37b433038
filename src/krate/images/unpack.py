"""Unpack image layers into a root folder so that no layer can reach outside it.

Why its own code: Debian's Python 3.11.2 has no tarfile extraction filters, and where they
exist `filter='data'` rejects the absolute symlinks every Debian image has, while
`filter='tar'` follows links on the host and knows nothing of whiteouts
(docs/images.md). So this module reads each layer with tarfile (streaming, nothing
extracted by it) and creates every entry itself:

- every path is resolved inside the root with directory descriptors: each component is
  opened with O_NOFOLLOW; a symbolic link met on the way is followed *inside the root*
  (an absolute target restarts at the root, `..` stops at it), the entry itself is never
  followed, and an existing entry is removed before a new one is created (O_EXCL), so
  neither a planted symlink nor a hard link lets a later write go anywhere else;
- `..` and absolute names are clamped to the root;
- whiteouts (`.wh.NAME`, and `.wh..wh..opq` for a whole folder) remove entries of lower
  layers only, never of the layer that carries them;
- hard links must name an existing non-folder inside the root;
- device nodes are skipped; setuid and setgid bits are stripped;
- folder modes are applied last (so a read-only folder can still be filled);
- owners are applied when running as root, and recorded (path -> uid, gid) otherwise.

gzip and plain tar layers are read; zstd only where the standard library has it (3.14+).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import NamedTuple

from krate.errors import KrateError
from krate.images.inroot import Root as _Root

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_BUFFER = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Report(NamedTuple):
    """What an unpack did that a user may want to know."""

    entries: int
    skipped: list[str]  # "path: reason" for entries not created (devices, bad links, ...)
    stripped: list[str]  # paths whose setuid/setgid bits were removed
    owners: dict[str, list[int]]  # path -> [uid, gid], non-root owners (unprivileged unpack)


def clamp(name: str) -> list[str]:
    """A tar member name as components inside the root: `..` and `/` cannot leave it."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


def open_layer(path: Path):
    """A binary stream of the layer's tar bytes, whatever its compression."""
    raw = open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")  # noqa: SIM115
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if head.startswith(ZSTD_MAGIC):
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError:
            raw.close()
            raise KrateError(
                f"layer {path.name} is zstd-compressed, which this Python cannot read "
                "(zstd is in the standard library from Python 3.14); use a gzip image"
            ) from None
        return zstd.ZstdFile(raw, mode="rb"), raw
    return raw, raw


class _Hashing:
    """Reads through to `inner`, hashing the uncompressed tar: its diff_id."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_COPY_BUFFER):
            pass
        return "sha256:" + self.hash.hexdigest()


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int) -> None:
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class Unpacker:
    """Apply layers, bottom first, to an empty root folder."""

    def __init__(self, root: Path, *, privileged: bool | None = None) -> None:
        self.root_path = root
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.dirs: dict[tuple, tuple[int, int, int, float | None]] = {}
        self.entries = 0
        self.skipped: list[str] = []
        self.stripped: list[str] = []
        self.owners: dict[str, list[int]] = {}

    def unpack(self, layers: list[Path], diff_ids: list[str] | None = None) -> Report:
        if diff_ids is not None and len(diff_ids) != len(layers):
            raise KrateError(
                f"the image config names {len(diff_ids)} layers, its manifest {len(layers)}"
            )
        root = _Root(self.root_path)
        try:
            for i, layer in enumerate(layers):
                self._layer(root, layer, diff_ids[i] if diff_ids is not None else None)
            self._finish_dirs(root)
        finally:
            root.close()
        os.chmod(self.root_path, 0o755)
        return Report(self.entries, self.skipped, self.stripped, self.owners)

    def _layer(self, root: _Root, layer: Path, diff_id: str | None) -> None:
        stream, raw = open_layer(layer)
        hashing = _Hashing(stream)
        mine: set[tuple] = set()  # entries this layer made: its own whiteouts spare them
        try:
            with tarfile.open(fileobj=hashing, mode="r|") as tar:
                for member in tar:
                    self._member(root, tar, member, mine)
            got = hashing.drain()
            if diff_id is not None and got != diff_id:
                raise KrateError(
                    f"layer {layer.name} does not match the image config "
                    f"(its tar hashes to {got}, the config says {diff_id}); re-import the image"
                )
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            if isinstance(exc, KrateError):
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise KrateError(f"layer {layer.name} cannot be unpacked: {first}") from exc
        finally:
            stream.close()
            raw.close()

    def _member(
        self, root: _Root, tar: tarfile.TarFile, member: tarfile.TarInfo, mine: set
    ) -> None:
        parts = clamp(member.name)
        if not parts:
            return  # the root itself: its mode stays 0755
        *folder, base = parts
        display = "/".join(parts)
        if base.startswith(WHITEOUT):
            self._whiteout(root, folder, base, mine)
            return
        if member.ischr() or member.isblk():
            self.skipped.append(f"{display}: device node")
            return
        if not (
            member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()
        ):
            self.skipped.append(f"{display}: unsupported entry type")
            return
        opened = root.walk(folder, create=True, made=self.dirs)
        assert opened is not None
        pfd, stack = opened
        key = (*stack, base)
        try:
            existing = _lstat(base, pfd)
            if member.isdir():
                if existing is not None and not stat.S_ISDIR(existing.st_mode):
                    _remove(base, pfd)
                    existing = None
                if existing is None:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                self.dirs[key] = (self._mode(member, display), member.uid, member.gid, member.mtime)
            else:
                if existing is not None:
                    _remove(base, pfd)
                    self.dirs.pop(key, None)
                if member.isreg():
                    self._file(tar, member, base, pfd, display)
                elif member.issym():
                    os.symlink(member.linkname, base, dir_fd=pfd)
                    self._own(base, pfd, member, display, follow=False)
                elif member.islnk():
                    if not self._hardlink(root, member, base, pfd, display):
                        return
                else:
                    os.mkfifo(base, self._mode(member, display), dir_fd=pfd)
                    self._own(base, pfd, member, display, follow=False)
            mine.add(key)
            self.entries += 1
        finally:
            os.close(pfd)

    def _mode(self, member: tarfile.TarInfo, display: str) -> int:
        mode = member.mode & 0o7777
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self.stripped.append(display)
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def _file(self, tar, member, base: str, pfd: int, display: str) -> None:
        fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
        with open(fd, "wb", buffering=0) as out:
            source = tar.extractfile(member)
            if source is not None:
                shutil.copyfileobj(source, out, _COPY_BUFFER)
            if self.privileged:
                os.fchown(fd, member.uid, member.gid)
            elif member.uid or member.gid:
                self.owners[display] = [member.uid, member.gid]
            os.fchmod(fd, self._mode(member, display))
            os.utime(fd, (member.mtime, member.mtime))

    def _own(self, base: str, pfd: int, member, display: str, *, follow: bool) -> None:
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=follow)
        elif member.uid or member.gid:
            self.owners[display] = [member.uid, member.gid]
        with contextlib.suppress(OSError):
            os.utime(base, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, root: _Root, member, base: str, pfd: int, display: str) -> bool:
        target = clamp(member.linkname)
        if not target:
            self.skipped.append(f"{display}: hard link to the root folder")
            return False
        opened = root.walk(target[:-1], create=False, made=self.dirs)
        if opened is None:
            self.skipped.append(f"{display}: hard link to a missing file")
            return False
        tfd, _ = opened
        try:
            st = _lstat(target[-1], tfd)
            if st is None:
                self.skipped.append(f"{display}: hard link to a missing file")
                return False
            if stat.S_ISDIR(st.st_mode):
                self.skipped.append(f"{display}: hard link to a folder")
                return False
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            return True
        finally:
            os.close(tfd)

    def _whiteout(self, root: _Root, folder: list[str], base: str, mine: set) -> None:
        opened = root.walk(folder, create=base == OPAQUE, made=self.dirs)
        if opened is None:
            return
        pfd, stack = opened
        try:
            names = os.listdir(pfd) if base == OPAQUE else [base[len(WHITEOUT) :]]
            for name in names:
                key = (*stack, name)
                if key in mine or name in ("", ".", ".."):
                    continue
                _remove(name, pfd)
                for gone in [k for k in self.dirs if k[: len(key)] == key]:
                    del self.dirs[gone]
                self.owners.pop("/".join(key), None)
        finally:
            os.close(pfd)

    def _finish_dirs(self, root: _Root) -> None:
        """Folder modes, owners and times last, deepest first (a parent may be read-only)."""
        for key in sorted(self.dirs, key=len, reverse=True):
            mode, uid, gid, mtime = self.dirs[key]
            try:
                fd = root.reopen(list(key))
            except OSError:
                continue  # replaced by a non-folder later
            try:
                if self.privileged:
                    os.fchown(fd, uid, gid)
                elif uid or gid:
                    self.owners["/".join(key)] = [uid, gid]
                os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def unpack(
    layers: list[Path],
    root: Path,
    *,
    diff_ids: list[str] | None = None,
    privileged: bool | None = None,
) -> Report:
    """Unpack `layers` (blob files, bottom first) into the empty folder `root`.

    With `diff_ids` (the config's rootfs.diff_ids) each layer's uncompressed tar must hash
    to its entry, so the tree is the one the config digest names."""
    return Unpacker(root, privileged=privileged).unpack(layers, diff_ids)
