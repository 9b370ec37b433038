"""Per-run folders a killed krate left behind, and whether a recorded krate still runs.

A krate that is killed cannot clean up: its run folder (Seatbelt's TMPDIR) stays, and
its run stays `running` in the store. The next krate sweeps such folders and marks such
runs, telling a live krate from a dead one by its pid and start time (procstart.py),
so a reused pid does not keep a dead run's leftovers alive.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from krate.sandbox import procstart

RUN_DIRS = "run"  # under the data folder: per-run folders (run_folder), swept when stale


def alive(pid: int | None, identity: str | None) -> bool:
    """Whether the process that wrote a record (pid + identity) is still running."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if identity is None:
        return True
    current = procstart.identity(pid)
    return current is None or current == identity


def sweep_stale(folder: Path) -> list[Path]:
    """Remove per-run folders under `folder` whose krate process is gone; return them."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        try:
            owner = (entry / "owner").read_text().split()
            pid, identity = int(owner[0]), owner[1] if len(owner) > 1 else None
        except (OSError, ValueError, IndexError):
            pid, identity = 0, None
        if pid and alive(pid, identity if identity != "-" else None):
            continue
        import shutil  # here: about 1.5 ms (with bz2, lzma) that a run without leftovers skips

        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def run_folder(base: Path, run_id: str):
    """A private per-run folder (0700) that is removed afterwards, even on errors.

    If krate is killed, `sweep_stale` removes it at the next start.
    """
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / run_id
    folder.mkdir(mode=0o700)
    pid = os.getpid()
    (folder / "owner").write_text(f"{pid} {procstart.identity(pid) or '-'}\n")
    try:
        yield folder
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
