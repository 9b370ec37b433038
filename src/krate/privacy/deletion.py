"""Delete with a seven-day grace period, restore, and purge.

Deleting renames the whole data folder, in one atomic rename, to
`<data folder>.pending-deletion/<UTC timestamp>/` beside it: nothing of it stays
under the data folder, krate starts afresh, and renaming it back restores it
byte for byte (same chain, same head). A separate config folder (Linux without
KRATE_HOME) first moves into the data folder as `.krate-config`, so it travels
in the same rename; if krate dies between the two steps, the next krate
invocation moves it back (the old state).

Purging first renames an entry to `<timestamp>.purging` (the commit), then removes
the keychain entries its record names, then the files; an interrupted purge is
finished by the next invocation. Never a partially deleted, still-restorable copy.

Never touches anything outside the data folder, the config folder and the pending area.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from krate.errors import KrateError, NotFound
from krate.paths import DB_NAME, Paths, ensure_private_dir
from krate.plural import counted
from krate.privacy import GRACE, pending_area
from krate.privacy.keychain import KeychainEntry, Remover, entries_in, remove_entries
from krate.privacy.places import separate_config, tree_size

STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
CONFIG_NAME = ".krate-config"
PURGING = ".purging"
DB_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")

Hook = Callable[[str], None]


def _nothing(point: str) -> None:
    """The default hook: tests pass one that kills the process at a named point."""


def stamp_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def has_content(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


@dataclass(frozen=True)
class Pending:
    """One pending deletion: restorable until `purge_after`."""

    stamp: str
    deleted_at: datetime
    purge_after: datetime
    path: Path
    bytes: int
    files: int
    has_config: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def list_pending(paths: Paths) -> list[Pending]:
    """Complete pending deletions, oldest first (expired ones included until purged)."""
    area = pending_area(paths)
    if not area.is_dir():
        return []
    found = []
    for entry in sorted(area.iterdir()):
        deleted_at = parse_stamp(entry.name)
        if deleted_at is None or not entry.is_dir():
            continue
        size, files = tree_size(entry)
        found.append(
            Pending(
                entry.name,
                deleted_at,
                deleted_at + GRACE,
                entry,
                size,
                files,
                (entry / CONFIG_NAME).exists(),
            )
        )
    return found


@dataclass(frozen=True)
class DeletionPlan:
    """What `krate data delete` would move aside (shown before asking)."""

    data_dir: Path
    config_dir: Path | None
    bytes: int
    files: int
    keychain: list[KeychainEntry]
    pending: list[Pending]

    @property
    def empty(self) -> bool:
        return self.files == 0 and not has_content(self.data_dir)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "config_dir": str(self.config_dir) if self.config_dir else None,
            "bytes": self.bytes,
            "files": self.files,
            "keychain": [e.to_dict() for e in self.keychain],
            "pending": [p.to_dict() for p in self.pending],
        }


def plan_delete(paths: Paths) -> DeletionPlan:
    size, files = tree_size(paths.data_dir)
    config = separate_config(paths)
    if config is not None and has_content(config):
        more = tree_size(config)
        size, files = size + more[0], files + more[1]
    else:
        config = None
    return DeletionPlan(
        paths.data_dir,
        config,
        size,
        files,
        entries_in(paths.db_path),
        list_pending(paths),
    )


@dataclass
class DeletionResult:
    stamp: str | None
    deleted_at: datetime
    purge_after: datetime | None
    moved_to: Path | None
    purged: list[str] = field(default_factory=list)
    keychain_listed: list[KeychainEntry] = field(default_factory=list)
    keychain_removed: list[KeychainEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stamp": self.stamp,
            "deleted_at": self.deleted_at,
            "purge_after": self.purge_after,
            "moved_to": str(self.moved_to) if self.moved_to else None,
            "purged": self.purged,
            "keychain_listed": [e.to_dict() for e in self.keychain_listed],
            "keychain_removed": [e.to_dict() for e in self.keychain_removed],
        }


def delete(
    paths: Paths,
    now: datetime,
    *,
    purge_now: bool = False,
    hook: Hook = _nothing,
    remover: Remover = remove_entries,
) -> DeletionResult:
    """Move all of krate's data aside as one pending deletion (or purge it, with `purge_now`).

    With `purge_now`, earlier pending deletions are purged as well: the user asked
    for everything to be gone now.
    """
    settle(paths, now, remover=remover)
    plan = plan_delete(paths)
    result = DeletionResult(None, now, None, None, keychain_listed=list(plan.keychain))
    if not plan.empty:
        _quiesce(paths)  # opens the store, whose start-up check may tidy the pending area away
        area = ensure_private_dir(pending_area(paths))
        stamp = stamp_of(now)
        final = area / stamp
        target = final.with_name(stamp + PURGING) if purge_now else final
        if final.exists() or target.exists():
            raise KrateError(f"a deletion stamped {stamp} already exists in {area}; try again")
        if plan.config_dir is not None:
            ensure_private_dir(paths.data_dir)
            _rename(plan.config_dir, paths.data_dir / CONFIG_NAME)
            hook("delete.config-moved")
        _rename(paths.data_dir, target)  # the commit: one atomic rename
        hook("delete.moved")
        result.stamp, result.moved_to = stamp, target
        if not purge_now:
            result.purge_after = now + GRACE
    if purge_now:
        for entry in list_pending(paths):
            _rename(entry.path, entry.path.with_name(entry.stamp + PURGING))
        result.purged, removed = _finish_purges(paths, hook, remover)
        result.keychain_removed = removed
    _tidy(paths)
    return result


def _quiesce(paths: Paths) -> None:
    """Fold the WAL into krate.db so the folder that moves is one self-contained database."""
    if not paths.db_path.is_file():
        return
    from krate.store import open_store
    from krate.store.prune import checkpoint_truncate

    with open_store(paths) as store:
        checkpoint_truncate(store.conn)


def _rename(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as exc:
        raise KrateError(
            f"cannot move {source} to {target}: {exc.strerror or exc}; nothing was changed "
            "(the pending-deletion folder must be on the same disk as the data folder)"
        ) from exc


def settle(paths: Paths, now: datetime, *, remover: Remover = remove_entries) -> list[str]:
    """Finish what an interrupted krate left, and purge deletions past their grace period.

    - a config folder moved into the data folder by a delete that did not commit goes back;
    - `<stamp>.purging` entries are purged (the purge had committed);
    - complete entries older than the grace period are purged.
    Returns the stamps purged.
    """
    area = pending_area(paths)
    if not area.is_dir():
        return []
    config = separate_config(paths)
    moved = paths.data_dir / CONFIG_NAME
    if config is not None and moved.is_dir() and not has_content(config):
        if config.exists():
            config.rmdir()
        _rename(moved, config)
    for entry in list_pending(paths):
        if now >= entry.purge_after:
            _rename(entry.path, entry.path.with_name(entry.stamp + PURGING))
    purged, _ = _finish_purges(paths, _nothing, remover)
    _tidy(paths)
    return purged


def _finish_purges(
    paths: Paths, hook: Hook, remover: Remover
) -> tuple[list[str], list[KeychainEntry]]:
    area = pending_area(paths)
    purged: list[str] = []
    removed: list[KeychainEntry] = []
    if not area.is_dir():
        return purged, removed
    for entry in sorted(area.iterdir()):
        if entry.name.endswith(PURGING):
            removed += _purge(entry, hook, remover)
            purged.append(entry.name[: -len(PURGING)])
    return purged, removed


def _purge(entry: Path, hook: Hook, remover: Remover) -> list[KeychainEntry]:
    """Remove the keychain entries the record names, then every file (the database last)."""
    removed = remover(entries_in(entry / DB_NAME))
    hook("purge.keychain-done")
    from krate.sandbox import pkgcache

    for folder, _workspace, _used in pkgcache.listing(entry):
        pkgcache.remove(folder)  # Go leaves read-only folders; links are never followed
    for name in ("artifacts", CONFIG_NAME):
        if (entry / name).exists():
            _remove_tree(entry / name)
    hook("purge.partial")
    _remove_tree(entry)
    return removed


def _remove_tree(path: Path) -> None:
    def fail(_function: Any, failed: str, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or exc
        raise KrateError(
            f"cannot remove {failed} while purging deleted data: {reason}; "
            f"remove {path} yourself (rm -rf)"
        ) from exc

    if path.is_dir() and not path.is_symlink():
        _writable_folders(path)  # unpacked images keep their read-only folders
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=fail)
        else:
            shutil.rmtree(
                path, onerror=lambda function, failed, info: fail(function, failed, info[1])
            )
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        fail(None, str(path), exc)


def _tidy(paths: Paths) -> None:
    """Remove the pending area once empty, so the next start-up check is a single failed stat."""
    with contextlib.suppress(OSError):
        pending_area(paths).rmdir()


@dataclass(frozen=True)
class Restored:
    stamp: str
    deleted_at: datetime
    data_dir: Path
    config_dir: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stamp": self.stamp,
            "deleted_at": self.deleted_at,
            "data_dir": str(self.data_dir),
            "config_dir": str(self.config_dir) if self.config_dir else None,
        }


def restore(
    paths: Paths,
    now: datetime,
    *,
    stamp: str | None = None,
    hook: Hook = _nothing,
    remover: Remover = remove_entries,
) -> Restored:
    """Put a pending deletion (the newest, or `stamp`) back where it was, exactly."""
    pending = list_pending(paths)
    if not pending:
        raise NotFound(
            "nothing to restore: there is no pending deletion "
            f"(deleted data is purged {GRACE.days} days after `krate data delete`)"
        )
    if stamp is None:
        entry = pending[-1]
    else:
        chosen = [p for p in pending if p.stamp == stamp]
        if not chosen:
            names = ", ".join(p.stamp for p in pending)
            raise NotFound(f"no pending deletion {stamp}; pending: {names}")
        entry = chosen[0]
    if now >= entry.purge_after:
        settle(paths, now, remover=remover)
        raise KrateError(
            f"the deletion of {_human(entry.deleted_at)} passed its {GRACE.days}-day grace period "
            f"on {_human(entry.purge_after)} and has been purged; it cannot be restored"
        )
    _make_room(paths.data_dir, entry)
    config = separate_config(paths)
    moved_config = entry.path / CONFIG_NAME
    restored_config = None
    if config is not None and moved_config.is_dir():
        if has_content(config):
            raise KrateError(
                f"{config} holds a new configuration; move it aside, then run "
                f"`krate data restore --from {entry.stamp}`"
            )
        if config.exists():
            config.rmdir()
        _rename(moved_config, config)
        restored_config = config
        hook("restore.config-moved")
    _rename(entry.path, paths.data_dir)  # the commit: one atomic rename
    _tidy(paths)
    return Restored(entry.stamp, entry.deleted_at, paths.data_dir, restored_config)


def _make_room(data_dir: Path, entry: Pending) -> None:
    """Clear a data folder that holds nothing recorded; refuse to overwrite one that does."""
    if not data_dir.exists():
        return
    from krate.store.headcopy import NAME as HEAD_COPY

    others = [p.name for p in data_dir.iterdir() if p.name not in (*DB_FILES, HEAD_COPY)]
    events = _event_count(data_dir / DB_NAME)
    if others or events:
        what = counted(events, "event") if events else ", ".join(sorted(others))
        raise KrateError(
            f"krate has recorded new data since the deletion ({what} in {data_dir}); "
            "restoring would overwrite it: move it aside first with `krate data delete --yes`, "
            f"then run `krate data restore --from {entry.stamp}`"
        )
    _remove_tree(data_dir)


def _event_count(db_path: Path) -> int:
    if not db_path.is_file():
        return 0
    from krate.store import inventory

    conn = inventory.open_readonly(db_path)
    try:
        counts = inventory.table_counts(conn)
    finally:
        conn.close()
    return counts.get("events", 0)


def _human(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _writable_folders(path: Path) -> None:
    """Let the owner remove what is inside every folder under `path` (links not followed)."""
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            child = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                st = os.lstat(child)
                if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                    os.chmod(child, stat.S_IMODE(st.st_mode) | 0o700)
