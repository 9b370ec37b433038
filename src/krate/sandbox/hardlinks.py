"""Hard links defeat hiding by path: find files under hidden paths that have other names.

A hard link is the same file under another name. Hiding `~/.ssh/id_ed25519` by
mounting over the path leaves a second name (say `~/project/notes.txt`, made
earlier) readable. Finding that other name would need a scan of every visible
file system; instead any hidden regular file with more than one link is
reported, and the run is refused unless the user accepts the risk.

Reads metadata only (lstat); never opens, follows symlinks out of, or changes a file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

MAX_ENTRIES = 100_000


class Scan(NamedTuple):
    linked: tuple[Path, ...]
    complete: bool  # False when MAX_ENTRIES was reached before the end


def scan(hidden: Iterable[Path], max_entries: int = MAX_ENTRIES) -> Scan:
    """Regular files under the hidden paths with st_nlink > 1."""
    found: list[Path] = []
    seen = 0
    for root in hidden:
        try:
            st = os.lstat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            seen += 1
            if st.st_nlink > 1:
                found.append(root)
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                entries = os.scandir(folder)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    seen += 1
                    if seen > max_entries:
                        return Scan(tuple(found), False)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif (
                            entry.is_file(follow_symlinks=False)
                            and entry.stat(follow_symlinks=False).st_nlink > 1
                        ):
                            found.append(Path(entry.path))
                    except OSError:
                        continue
    return Scan(tuple(sorted(found)), True)
