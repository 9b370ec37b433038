"""What `krate data where` needs of deletion.py and export.py, without their imports.

Those modules load dataclasses (~5 ms of `data where`'s start) for records `where`
does not use; they import these names from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from krate.paths import DB_NAME, Paths

EXPORTED_KIND = "data.exported"
REMOVAL_AVAILABLE = True  # `krate data delete --now` removes them (krate.registry.keychain)


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`, not following symlinks; (0, 0) if it does not exist."""
    if not path.exists():
        return 0, 0
    if path.is_file():
        return path.lstat().st_size, 1
    size = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return size, files


def separate_config(paths: Paths) -> Path | None:
    """The config folder when it is not the data folder itself (it then needs moving too)."""
    if paths.config_dir.absolute() == paths.data_dir.absolute():
        return None
    return paths.config_dir


def config_files(paths: Paths) -> list[Path]:
    """The user's own files in the config folder (user policy, trust files), not krate.db."""
    folder = paths.config_dir
    if not folder.is_dir():
        return []
    from krate.store.headcopy import NAME as HEAD_COPY

    # krate's own files when both folders are one (KRATE_HOME); the head copy's seq and
    # hash are the export's chain head (manifest.json), not a file of the user's.
    skip = {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", HEAD_COPY}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in skip)
