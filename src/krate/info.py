"""What `krate info` reports: versions, paths, store state, backends. Reads only."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from typing import Any

from krate import __version__
from krate.netguard import guard, lockdown
from krate.paths import Paths
from krate.registry.backend_name import backend_name
from krate.sandbox.detect import detect


def gather(paths: Paths, environ: Mapping[str, str]) -> dict[str, Any]:
    from krate.store import inventory, open_store

    with open_store(paths, readonly=True) as store:
        database = inventory.database(store, paths.db_path, by_kind=False)  # as `data where`
    backend = detect()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "data_dir": str(paths.data_dir),
        "data_dir_exists": paths.data_dir.is_dir(),
        "config_dir": str(paths.config_dir),
        "config_dir_exists": paths.config_dir.is_dir(),
        "db_path": database["path"],
        "db_exists": database["exists"],
        "db_size": database["bytes"],
        "schema_version": database["schema_version"],
        "events": database["events"],
        "sandbox": {"backend": backend.backend, "available": backend.available},
        "keyring_backend": backend_name(environ),
        "telemetry": "none",
        "lockdown": lockdown.state(),
        "network_guard": "installed" if guard.installed() else "not installed",
    }
