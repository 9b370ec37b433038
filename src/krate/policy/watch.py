"""krate.toml files that appeared or changed while a workload ran.

Every krate.toml from the working folder up applies to later runs (narrowing only,
unless trusted), so a workload that writes one changes what a later run from that
folder gets: narrower, or wider if the user trusts it without reading it. A run
therefore reports the ones written while it ran.

No list is taken before the run: walking the workspace would cost every run's
start-up. Instead, after the run, a file named krate.toml whose status-change time
(ctime, which a process cannot set back, unlike mtime) is not older than the run's
start is reported. os.walk would stat every folder; this walk asks only the
directory entries (d_type) and stats only the entries named krate.toml.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from krate.policy.load import PROJECT_FILE
from krate.records import NamedTuple

# About 1.5 s of walking (1.5 µs an entry on a 2-CPU machine); past it the check says it stopped.
MAX_ENTRIES = 1_000_000


class Written(NamedTuple):
    paths: list[str]  # krate.toml files created or changed since the start, sorted
    complete: bool  # False when MAX_ENTRIES stopped the walk


def clock() -> int:
    """Now in nanoseconds, on the clock the kernel stamps ctime with.

    Linux stamps file times from the coarse clock, which may lag the precise one by
    a tick: comparing against time.time() could miss a file written right after it.
    """
    coarse = getattr(time, "CLOCK_REALTIME_COARSE", None)
    if coarse is not None:
        return time.clock_gettime_ns(coarse)
    return time.time_ns()


def _outermost(roots: Iterable[str]) -> list[str]:
    ordered = sorted(dict.fromkeys(roots), key=len)
    kept: list[str] = []
    for root in ordered:
        if not any(root == k or root.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(root)
    return kept


def written_since(
    roots: Iterable[os.PathLike | str], since_ns: int, *, limit: int = MAX_ENTRIES
) -> Written:
    """krate.toml files under `roots` whose ctime is at or after `since_ns` (see clock())."""
    found: list[str] = []
    seen = 0
    stack = _outermost(os.fspath(r) for r in roots)
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:  # gone, or made unreadable: nothing a later run could read either
            continue
        with entries:
            for entry in entries:
                seen += 1
                if seen > limit:
                    return Written(sorted(found), False)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif (
                        entry.name == PROJECT_FILE
                        and entry.stat(follow_symlinks=False).st_ctime_ns >= since_ns
                    ):
                        found.append(entry.path)
                except OSError:
                    continue
    return Written(sorted(found), True)
