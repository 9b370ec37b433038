"""Which files a build produced: every regular file under each `--out` path.

Names are relative and use `/`: relative to the working directory when the output
is inside it (`dist/app.tar.gz`), else to the output path's parent (`out/app.tar.gz`).
Symbolic links are never followed and never collected (a workload could plant one
pointing at the user's secrets, and krate reads outputs outside the sandbox); they
are reported as skipped, as are sockets, pipes and devices.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from krate.errors import KrateError, UsageError
from krate.provenance.store import NOFOLLOW, NONBLOCK, open_regular


@dataclass(frozen=True)
class Output:
    name: str
    path: Path
    # Where to open it from without following any link: a folder and the parts below it.
    root: Path | None = None
    parts: tuple[str, ...] = ()

    def open(self) -> int:
        """A read-only fd for this file, refusing a link at any level below `root`.

        Opening component by component (dir_fd + O_NOFOLLOW) closes the race where a
        process swaps a folder for a link between the walk and the read.
        """
        if self.root is None or not self.parts:
            return open_regular(self.path)
        flags_dir = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW
        try:
            fd = os.open(self.root, flags_dir)
            try:
                for part in self.parts[:-1]:
                    nxt = os.open(part, flags_dir, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
                leaf = os.open(self.parts[-1], os.O_RDONLY | NOFOLLOW | NONBLOCK, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise KrateError(
                    f"{self.name} changed into a symbolic link while krate read the outputs; "
                    "krate does not follow links"
                ) from exc
            raise KrateError(f"cannot read output {self.name}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(os.fstat(leaf).st_mode):
            os.close(leaf)
            raise KrateError(f"output {self.name} is no longer a regular file")
        return leaf


@dataclass
class Collected:
    files: list[Output] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _absolute(path: str | os.PathLike, cwd: Path) -> Path:
    p = Path(os.path.expanduser(os.fspath(path)))
    return Path(os.path.normpath(p if p.is_absolute() else cwd / p))


def relative_name(path: Path, base: Path) -> str:
    return PurePosixPath(*path.relative_to(base).parts).as_posix()


def _base_for(out: Path, cwd: Path) -> Path:
    try:
        out.relative_to(cwd)
    except ValueError:
        return out.parent
    return cwd


def collect(out_paths: Sequence[str | os.PathLike], cwd: Path) -> Collected:
    """Every regular file under each output path, sorted by name, each once."""
    cwd = Path(os.path.normpath(cwd))
    result = Collected()
    seen: set[str] = set()

    def add(path: Path, base: Path, root: Path) -> None:
        name = relative_name(path, base)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISREG(mode):
            if name not in seen:
                seen.add(name)
                result.files.append(Output(name, path, root, path.relative_to(root).parts))
        else:
            result.skipped.append(name)

    for given in out_paths:
        out = _absolute(given, cwd)
        try:
            mode = os.lstat(out).st_mode
        except FileNotFoundError:
            raise KrateError(
                f"--out {os.fspath(given)} does not exist after the build; "
                "check the path (relative to the working directory)"
            ) from None
        base = _base_for(out, cwd)
        if stat.S_ISLNK(mode):
            raise KrateError(
                f"--out {os.fspath(given)} is a symbolic link; krate does not follow links: "
                "name the real folder or file"
            )
        if not stat.S_ISDIR(mode):
            add(out, base, out.parent)
            continue
        for root, dirs, files in os.walk(out, followlinks=False):
            top = Path(root)
            for name in dirs:
                if os.path.islink(top / name):  # os.walk lists links to folders as folders
                    result.skipped.append(relative_name(top / name, base))
            for name in files:
                add(top / name, base, out)
    result.files.sort(key=lambda o: o.name)
    return result


def match_inputs(patterns: Sequence[str], cwd: Path) -> list[Output]:
    """Regular files (never links) matching the `--input` globs, relative to `cwd`.

    `**` matches any number of folders. Files outside `cwd` keep their absolute path
    as their name. A pattern that matches no file is an error
    (usually a typo), raised before anything runs.
    """
    found: dict[str, Output] = {}
    for pattern in patterns:
        hits = 0
        absolute = os.path.isabs(os.path.expanduser(pattern))
        expanded = os.path.expanduser(pattern)
        matches = (
            glob.glob(expanded, recursive=True)
            if absolute
            else glob.glob(expanded, root_dir=cwd, recursive=True)
        )
        for match in matches:
            path = _absolute(match, cwd)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue
            hits += 1
            base = _base_for(path, cwd)
            name = relative_name(path, cwd) if base == cwd else path.as_posix()
            found.setdefault(name, Output(name, path))
        if not hits:
            raise UsageError(
                f"--input {pattern!r} matches no file (relative to {cwd}); "
                "check the pattern (use ** for any depth)"
            )
    return sorted(found.values(), key=lambda o: o.name)
