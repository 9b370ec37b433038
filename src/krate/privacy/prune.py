"""Retention: drop old runs, decisions and events, keep the chain verifiable, leave no copy.

One write transaction removes the oldest events (whole runs only) and every row
tied to them, and appends a `chain.checkpoint` event naming the first kept seq and
the hash it follows from, so `krate audit verify` walks the rest from there. Trust
in project files is never pruned: trust the chain backed is recorded again after
the checkpoint (`policy.trusted` with `carried_from`), so it stays backed. Deleted
content is zeroed (secure_delete), the file rebuilt (VACUUM, temporary copy in
memory) and the WAL emptied. Artifacts no longer referenced are removed after the
commit. A kill at any point leaves the old or the new state: the transaction is
atomic, and the steps after it only remove what the new state no longer needs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate.store import prune as sql
from krate.store.events import CHECKPOINT_KIND, format_ts

if TYPE_CHECKING:
    from krate.store import Store

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# An artifact file younger than this is left alone even when no row names it yet:
# a build may be between writing the file and recording its row.
ORPHAN_MIN_AGE = timedelta(minutes=15)

Hook = Callable[[str], None]


def _nothing(point: str) -> None:
    """The default hook: tests pass one that kills the process at a named point."""


@dataclass
class PruneResult:
    cutoff: str
    events: int = 0
    runs: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    oldest: str | None = None
    newest: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    checkpoint_seq: int | None = None
    artifacts_removed: list[str] = field(default_factory=list)
    caches_removed: list[str] = field(default_factory=list)  # projects' package caches
    wal_emptied: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(store: Store, cutoff: datetime) -> PruneResult:
    """What pruning before `cutoff` would remove (nothing is changed)."""
    found = sql.plan(store.conn, format_ts(cutoff))
    result = PruneResult(format_ts(cutoff))
    if found:
        result.events, result.runs = found.events, found.runs
        result.first_seq, result.last_seq = found.first_seq, found.last_seq
        result.oldest, result.newest = found.oldest, found.newest
    return result


def prune(
    store: Store,
    cutoff: datetime,
    artifacts_dir: Path,
    now: datetime,
    *,
    hook: Hook = _nothing,
    data_dir: Path | None = None,
) -> PruneResult:
    """Prune everything recorded before `cutoff`; see the module docstring for the guarantees.

    With `data_dir`, the package caches (sandbox/pkgcache.py) of projects whose folder is
    gone or that no run used since `cutoff` are removed too.
    """
    from krate.store import images, trust

    cutoff_ts = format_ts(cutoff)
    result = PruneResult(cutoff_ts)
    sql.prepare(store.conn)
    store.catch_up_head_copy()  # a copy naming a pruned event could no longer be checked
    with store.write() as writer:
        found = sql.plan(store.conn, cutoff_ts)
        if found is not None:
            carried = trust.backed_before(store.conn, found.last_seq)
            images_carried = images.recorded_before(store.conn, found.last_seq)
            deleted = sql.delete_prefix(store.conn, sql.Scope(found.last_seq, cutoff_ts))
            hook("prune.deleted")
            result.events = deleted.pop("events", 0)
            result.runs, result.tables = found.runs, deleted
            result.first_seq, result.last_seq = found.first_seq, found.last_seq
            result.oldest, result.newest = found.oldest, found.newest
            checkpoint = writer.append(
                CHECKPOINT_KIND,
                {
                    "first_seq": found.last_seq + 1,
                    "prev_hash": found.prev_hash,
                    "pruned_before": cutoff_ts,
                    "events": result.events,
                    "runs": result.runs,
                    "tables": deleted,
                },
            )
            result.checkpoint_seq = checkpoint.seq
            trust.carry_over(writer, carried)  # trust outlives its pruned event, still backed
            images.carry_over(writer, images_carried)  # so do the images still on disk
    hook("prune.committed")
    result.artifacts_removed = remove_orphan_artifacts(store, artifacts_dir, now - ORPHAN_MIN_AGE)
    hook("prune.artifacts-removed")
    if data_dir is not None:
        result.caches_removed = remove_stale_caches(data_dir, cutoff)
    # Always compact, even when nothing was pruned now: it finishes a prune killed before this.
    result.wal_emptied = sql.compact(store.conn)
    return result


def remove_stale_caches(data_dir: Path, cutoff: datetime) -> list[str]:
    """Remove the package caches of projects gone or unused since `cutoff`; their folder names.

    Never follows a link inside a cache (pkgcache.remove): a workload wrote those files.
    """
    from krate.sandbox import pkgcache

    removed = []
    for folder, workspace, used in pkgcache.listing(data_dir):
        if workspace and os.path.isdir(workspace) and used >= cutoff.timestamp():
            continue
        pkgcache.remove(folder)
        removed.append(folder.name)
    return removed


def remove_orphan_artifacts(store: Store, artifacts_dir: Path, older_than: datetime) -> list[str]:
    """Remove files under artifacts/sha256/ that no row of the `artifacts` table names.

    Without an `artifacts` table nothing is removed: krate never guesses what is unused.
    Returns the removed digests.
    """
    referenced = sql.referenced_digests(store.conn)
    root = artifacts_dir / "sha256"
    if referenced is None or not root.is_dir():
        return []
    limit = older_than.timestamp()
    removed = []
    for entry in sorted(root.iterdir()):
        if not _HEX64.match(entry.name) or entry.name in referenced:
            continue
        try:
            info = entry.lstat()
            if not entry.is_file() or info.st_mtime >= limit:
                continue
            os.unlink(entry)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed
