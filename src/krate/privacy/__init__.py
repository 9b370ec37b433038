"""The user's rights over their data, locally: where it is, export, delete, restore, prune.

This package never reads the environment and never prints; the CLI passes paths,
the clock and confirmation in. `purge_expired` is on the path of every writable
store open, so its common case (nothing pending) costs one stat and no imports.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from krate.paths import Paths

GRACE = timedelta(days=7)
PENDING_SUFFIX = ".pending-deletion"


def pending_area(paths: Paths) -> Path:
    """Where deleted data waits out its grace period: a sibling of the data folder, never inside.

    e.g. `~/Library/Application Support/krate.pending-deletion/20260430T120000.000000Z/`
    """
    return paths.data_dir.with_name(paths.data_dir.name + PENDING_SUFFIX)


def purge_expired(paths: Paths, now: datetime) -> list[str]:
    """Purge pending deletions older than the grace period and finish interrupted operations.

    Returns the timestamps of what it purged. One stat when nothing is pending.
    """
    try:
        os.lstat(pending_area(paths))
    except FileNotFoundError:
        return []
    from krate.privacy.deletion import settle

    return settle(paths, now)
