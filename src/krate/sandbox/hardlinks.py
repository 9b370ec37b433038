"""Hard links defeat hiding by path: find files under hidden paths that have other names.

A hard link is the same file under another name. Hiding `~/.ssh/id_ed25519` by
mounting over the path leaves a second name (say `~/project/notes.txt`, made
earlier) readable. Finding that other name would need a scan of every visible
file system; instead every hidden regular file whose link count is higher than
the number of its names inside the hidden paths is reported (links between two
hidden names, which some applications make in their own folders, are harmless),
and the run is refused unless the user accepts the risk.

Every entry is checked, however many there are: counting names stops after
`MAX_ENTRIES` (to bound the work and memory for huge folders), and from there a
file with more than one link counts as linked on its `st_nlink` alone. Stopping
there instead would let a link placed past the limit through; refusing instead
would refuse every run of a user with a large hidden folder (a browser profile).
The check costs one `lstat` per entry either way (`bench/bench_hardlinks.py`).

Reads metadata only (lstat); never opens, follows symlinks out of, or changes a file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from krate.records import NamedTuple

MAX_ENTRIES = 100_000


class Scan(NamedTuple):
    linked: tuple[Path, ...]
    complete: bool  # False when past MAX_ENTRIES files counted on st_nlink alone


def scan(hidden: Iterable[Path], max_entries: int = MAX_ENTRIES) -> Scan:
    """Hidden regular files that have a name outside the hidden paths (st_nlink too high).

    A name is counted once as (folder's device and inode, entry name), so nested
    hidden paths or a folder mounted twice cannot make an outside name look hidden.
    """
    names: dict[tuple[int, int], set] = {}  # file (dev, ino) -> its names seen here
    links: dict[tuple[int, int], tuple[int, str]] = {}  # file (dev, ino) -> (nlink, a path)
    seen = 0
    beyond: list[str] = []  # past max_entries: multiply-linked files, on st_nlink alone

    def note(path: str, name: tuple, st: os.stat_result) -> None:
        if seen > max_entries:
            beyond.append(path)
            return
        key = (st.st_dev, st.st_ino)
        names.setdefault(key, set()).add(name)
        links.setdefault(key, (st.st_nlink, path))

    def found(complete: bool) -> Scan:
        # Without the whole picture, every multiply-linked file counts as linked from outside.
        linked = [p for key, (n, p) in links.items() if n > len(names[key]) or not complete]
        return Scan(tuple(sorted({Path(p) for p in (*linked, *beyond)})), complete)

    for root in hidden:
        try:
            st = os.lstat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            seen += 1
            if st.st_nlink > 1:
                try:
                    parent = os.stat(os.path.dirname(root))
                except OSError:
                    continue
                note(str(root), (parent.st_dev, parent.st_ino, os.path.basename(root)), st)
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        stack = [(str(root), st)]
        while stack:
            folder, folder_st = stack.pop()
            try:
                entries = os.scandir(folder)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    seen += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, entry.stat(follow_symlinks=False)))
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if st.st_nlink > 1:
                                name = (folder_st.st_dev, folder_st.st_ino, entry.name)
                                note(entry.path, name, st)
                    except OSError:
                        continue
    return found(complete=seen <= max_entries)
