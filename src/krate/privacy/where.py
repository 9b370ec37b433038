"""`krate data where`: every place krate keeps anything, with sizes and counts per kind of record.

Reads only (the store is opened read-only). Keychain entries are listed by service
and account name from krate's own record; secrets are never read or shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krate.paths import Paths
from krate.privacy import GRACE, pending_area
from krate.privacy.places import (
    EXPORTED_KIND,
    REMOVAL_AVAILABLE,
    config_files,
    separate_config,
    tree_size,
)
from krate.records import NamedTuple
from krate.registry.backend_name import SERVICE


class Place(NamedTuple):  # not a dataclass: its import is ~5 ms of this command's start
    place: str
    path: str | None
    exists: bool
    bytes: int
    records: dict[str, Any]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def _at(path: Path, place: str, note: str, records: dict[str, Any] | None = None) -> Place:
    size, files = tree_size(path)
    counts = {"files": files} if path.is_dir() else {}
    counts.update(records or {})
    return Place(place, str(path), path.exists(), size, counts, note)


def where(paths: Paths) -> dict[str, Any]:
    """The inventory, as plain data: {data_dir, config_dir, pending_area, places: [...]}."""
    from krate.store import events, inventory, open_store

    with open_store(paths, readonly=True) as store:
        database = inventory.database(store, paths.db_path)
        accounts = inventory.credential_accounts(store.conn)
        exports = events.query(store, kind_prefix=EXPORTED_KIND)

    places = [
        _at(paths.data_dir, "data folder", "everything krate records; private (0700)"),
        _database(database),
        _artifact_store(paths),
        _image_roots(paths),
        _package_caches(paths),
        *_configuration(paths),
        *_pending(paths),
        _keychain(accounts),
        *(_export(event) for event in exports),
    ]
    return {
        "data_dir": str(paths.data_dir),
        "config_dir": str(paths.config_dir),
        "pending_area": str(pending_area(paths)),
        "places": [p.to_dict() for p in places],
    }


def _database(facts: dict[str, Any]) -> Place:
    """The database, from the facts `krate info` also shows (store/inventory.py)."""
    records = {key: facts[key] for key in ("events", "events_by_kind", "tables", "files")}
    return Place(
        "database",
        facts["path"],
        facts["exists"],
        facts["bytes"],
        records,
        "SQLite (WAL): the event chain and its index tables; krate.head beside it "
        "repeats the newest event's seq and hash",
    )


def _artifact_store(paths: Paths) -> Place:
    blobs = paths.artifacts_dir / "sha256"
    count = sum(1 for p in blobs.iterdir() if p.is_file()) if blobs.is_dir() else 0
    records = {"artifacts": count}
    note = "build outputs and image blobs by SHA-256"
    return _at(paths.artifacts_dir, "artifact store", note, records)


def _image_roots(paths: Paths) -> Place:
    note = "unpacked images (derived: a run unpacks a missing one again from the blobs)"
    return _at(paths.image_roots, "image roots", note)


def _package_caches(paths: Paths) -> Place:
    from krate.sandbox import pkgcache

    projects = pkgcache.listing(paths.data_dir)
    return _at(
        paths.data_dir / pkgcache.CACHES,
        "package caches",
        "npm, pip, cargo, Go, yarn, pnpm and uv caches of sandboxed runs, one set per "
        "project (never your own caches); `krate data prune` removes those of projects "
        "gone or unused",
        {"projects": len(projects)},
    )


def _configuration(paths: Paths) -> list[Place]:
    """The config folder when it is not the data folder, the user policy, the other files."""
    places = []
    config = separate_config(paths)
    if config is not None:
        places.append(_at(config, "config folder", "your configuration"))
    policy = paths.user_policy
    places.append(_at(policy, "user policy", "your policy file (TOML)"))
    for path in config_files(paths):
        if path != policy:
            places.append(_at(path, "config file", "a file in krate's config folder"))
    return places


def _pending(paths: Paths) -> list[Place]:
    """Each deletion still in its grace period, or a line saying there is none."""
    if not pending_area(paths).is_dir():
        entries = []  # deletion.py (dataclasses, the keychain's modules) only when needed
    else:
        from krate.privacy.deletion import list_pending

        entries = list_pending(paths)
    places = [
        _at(
            entry.path,
            "pending deletion",
            f"deleted {_short(entry.deleted_at)}; restorable with `krate data restore` until "
            f"{_short(entry.purge_after)}, then purged",
        )
        for entry in entries
    ]
    return places or [
        Place(
            "pending deletions",
            str(pending_area(paths)),
            False,
            0,
            {"deletions": 0},
            f"none (deleted data waits here {GRACE.days} days, then is purged)",
        )
    ]


def _keychain(accounts: list[str]) -> Place:
    removal = "removed by `krate data delete --now`" if REMOVAL_AVAILABLE else "not removed"
    return Place(
        "keychain",
        None,
        bool(accounts),
        0,
        {
            "entries": len(accounts),
            "accounts": [{"service": SERVICE, "account": name} for name in accounts],
        },
        f"OS keychain, service {SERVICE!r}; names from krate's record "
        f"(credential.stored/removed events), secrets never read; {removal}",
    )


def _export(event: Any) -> Place:
    target = Path(str(event.data.get("file", "")))
    exists = target.is_file()
    return Place(
        "export",
        str(target),
        exists,
        target.stat().st_size if exists else 0,
        {"events": event.data.get("events", 0)},
        f"a copy you exported {event.ts[:16].replace('T', ' ')} UTC; yours to keep or "
        "delete (krate never touches it)",
    )


def _short(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
