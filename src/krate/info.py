"""What `krate info` reports: versions, paths, store state, backends. Reads only."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from typing import Any

from krate import __version__
from krate.netguard import guard, lockdown
from krate.paths import Paths
from krate.registry.keychain import backend_name
from krate.sandbox.detect import detect


def gather(paths: Paths, environ: Mapping[str, str]) -> dict[str, Any]:
    from krate.store import events, open_store

    db_path = paths.db_path
    with open_store(paths, readonly=True) as store:
        schema_version = store.schema_version
        n_events = events.count(store)
    backend = detect()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "data_dir": str(paths.data_dir),
        "config_dir": str(paths.config_dir),
        "db_path": str(db_path),
        "db_size": db_path.stat().st_size if db_path.exists() else 0,
        "schema_version": schema_version,
        "events": n_events,
        "sandbox": {"backend": backend.backend, "available": backend.available},
        "keyring_backend": backend_name(environ),
        "telemetry": "none",
        "lockdown": lockdown.state(),
        "network_guard": "installed" if guard.installed() else "not installed",
    }
