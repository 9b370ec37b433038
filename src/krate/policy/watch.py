"""krate.toml files that appeared or changed while a workload ran.

Every krate.toml from the working folder up applies to later runs (narrowing only,
unless trusted), so a workload that writes one changes what a later run from that
folder gets: narrower, or wider if the user trusts it without reading it. A run
therefore reports the ones written while it ran: every file named krate.toml under the
writable folders whose status-change time (ctime, which a process cannot set back,
unlike mtime) is not older than the run's start. No list is taken before the run:
walking the workspace would cost every run's start-up.

Listing the folders is the cost (about 10 us a folder and 0.5 us an entry here, most of
it in the kernel: a node_modules folder takes tens of milliseconds), and it used to come
after the workload, on every run's way out. `Watch` lists them while the workload runs,
in a thread at the lowest priority, and afterwards trusts a listing only for a folder
that is still the same folder (device and inode) and whose own ctime is older than the
run's start: a folder in which an entry was added, removed or renamed has a newer one.
Those unchanged folders cost one stat each; every other one, and every folder the
thread did not reach, is listed again. A krate.toml changed in place changes no folder,
so every krate.toml the listings saw is stat'ed again too. `written_since` is the same
walk with nothing listed before (a run too short for the thread ends up there).
The walk asks only the directory entries (d_type), never follows a symbolic link, and
stats only the entries named krate.toml.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Iterable

from krate.policy.load import PROJECT_FILE
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.helper_process import QuickThread

# About 1.5 s of walking (1.5 µs an entry on a 2-CPU machine); past it the check says it stopped.
MAX_ENTRIES = 1_000_000
# Listing ahead starts this long after the workload: most runs in a shell loop end
# sooner, and then the thread would only have competed with their start and end.
AHEAD_AFTER_S = 0.1
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Written(NamedTuple):
    paths: list[str]  # krate.toml files created or changed since the start, sorted
    complete: bool  # False when MAX_ENTRIES stopped the walk


# Linux's CLOCK_REALTIME_COARSE, which the time module does not name (the getattr was
# None there, and time.time_ns() ran ahead of 99% of the ctimes stamped right after it).
_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)


def clock() -> int:
    """Now in nanoseconds, on the clock the kernel stamps ctime with.

    Linux stamps file times from the coarse clock, which may lag the precise one by
    a tick: comparing against time.time() could miss a file written right after it.
    """
    if _COARSE is not None:
        return time.clock_gettime_ns(_COARSE)
    return time.time_ns()


def _outermost(roots: Iterable[str]) -> list[str]:
    ordered = sorted(dict.fromkeys(roots), key=len)
    kept: list[str] = []
    for root in ordered:
        if not any(root == k or root.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(root)
    return kept


class Listing(NamedTuple):
    identity: tuple[int, int]  # (device, inode) of the folder that was listed
    folders: list[str]  # paths of its folders (never a symbolic link)
    files: list[str]  # paths of its krate.toml entries


class Watch:
    """The walk for one run: `start()` once the workload runs, `finish()` once it ended."""

    def __init__(
        self, roots: Iterable[os.PathLike | str], since_ns: int, *, limit: int = MAX_ENTRIES
    ) -> None:
        self.since, self.limit = since_ns, limit
        self.roots = _outermost(os.fspath(r) for r in roots)
        self.pending = list(self.roots)  # folders the thread has yet to list
        self.listed: dict[str, Listing] = {}  # what the thread listed, by path
        self.seen = 0  # entries listed, against `limit`
        self.halt = threading.Event()
        self.thread: QuickThread | None = None

    def start(self) -> None:
        """List ahead in a daemon thread while the workload runs (where a folder can be
        listed through a descriptor; elsewhere everything is listed at the end)."""
        if os.scandir not in os.supports_fd:
            return
        from krate.helper_process import QuickThread  # no wait for the thread to run

        self.thread = QuickThread(self._ahead).start()

    def stop(self) -> None:
        """Stop listing ahead (the run ended without a finish)."""
        self.halt.set()

    def _ahead(self) -> None:
        if self.halt.wait(AHEAD_AFTER_S):
            return  # a short run: the walk after it costs what listing ahead would have
        if sys.platform.startswith("linux"):  # a thread's own nice value (Linux only)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with contextlib.suppress(Exception):  # an optimisation: finish() lists what is missing
            self._list_ahead()

    def _list_ahead(self) -> None:
        while self.pending and not self.halt.is_set() and self.seen <= self.limit:
            folder = self.pending.pop()
            listing = self._list_open(folder)
            if listing is not None:
                self.listed[folder] = listing
                self.pending += listing.folders

    def _list_open(self, folder: str) -> Listing | None:
        """While the workload runs: the folder opened first (never through a symbolic link
        as its last part), so that the identity is the listed folder's even if a part of
        the path was swapped meanwhile; None when it cannot be opened as a folder."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            return Listing((st.st_dev, st.st_ino), *self._entries(fd, folder.rstrip("/")))
        except OSError:
            return None
        finally:
            os.close(fd)

    def _entries(self, where: int | str, base: str = "") -> tuple[list[str], list[str]]:
        """The paths of the folders and of the krate.toml entries in `where`: a path, or a
        descriptor of the folder at `base` (whose entries know only their names)."""
        folders: list[str] = []
        files: list[str] = []
        count = 0
        by_fd = isinstance(where, int)
        with os.scandir(where) as listing:
            for entry in listing:
                count += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(f"{base}/{entry.name}" if by_fd else entry.path)
                    elif entry.name == PROJECT_FILE:
                        files.append(f"{base}/{entry.name}" if by_fd else entry.path)
                except OSError:
                    continue
        self.seen += count
        return folders, files

    def finish(self) -> Written:
        """The krate.toml files written since the start.

        From the roots down, through folders only: a folder listed ahead that is still the
        same folder with an older ctime has the entries it was listed with (its children
        are then checked the same way, and its krate.toml files stat'ed for a change in
        place); any other is listed now. The workload has ended: nothing moves meanwhile.
        """
        self.halt.set()
        if self.thread is not None:
            self.thread.join()
        since = self.since
        found: list[str] = []
        stack = list(self.roots)
        while stack:
            folder = stack.pop()
            ahead = self.listed.get(folder)
            if ahead is not None:
                try:
                    st = os.lstat(folder)
                except OSError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    continue  # a root that is no folder now (a child always is one: below)
                if ahead.identity != (st.st_dev, st.st_ino) or st.st_ctime_ns >= since:
                    ahead = None  # another folder now, or changed: listed again
            if ahead is not None:
                folders, files = ahead.folders, ahead.files  # unchanged since it was listed
            else:
                if self.seen > self.limit:
                    return Written(sorted(found), False)
                try:
                    folders, files = self._entries(folder)
                except OSError:  # gone, or made unreadable: nothing a later run could read either
                    continue
            stack += folders
            for path in files:
                if _changed(path, since):
                    found.append(path)
        return Written(sorted(found), self.seen <= self.limit)


def _changed(path: str, since: int) -> bool:
    try:
        return os.lstat(path).st_ctime_ns >= since
    except OSError:
        return False


def written_since(
    roots: Iterable[os.PathLike | str], since_ns: int, *, limit: int = MAX_ENTRIES
) -> Written:
    """krate.toml files under `roots` whose ctime is at or after `since_ns` (see clock()),
    with nothing listed ahead."""
    return Watch(roots, since_ns, limit=limit).finish()
