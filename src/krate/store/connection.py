"""Opening krate.db: WAL, busy timeout, foreign keys, migrations, private file modes.

Also the write transaction every feature appends through (`Store.write()`): it
takes the write lock up front (BEGIN IMMEDIATE) so the event chain stays linear
when several krate processes run at once, and after its COMMIT advances the copy
of the newest head kept beside the database (store/headcopy.py).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from krate.errors import StoreError
from krate.paths import FILE_MODE, Paths, ensure_private_dir, make_private_file
from krate.store import headcopy
from krate.store import migrations as schema

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from sqlite_utils import Database

    from krate.store.events import Head, Writer

BUSY_TIMEOUT_S = 60.0
# What to do with a damaged database: the head copy goes with it, or it would (rightly)
# report the fresh record that follows as a store cut back.
DAMAGED_FIX = (
    f"keep a copy for investigation, then move it and {headcopy.NAME} beside it aside "
    "(krate starts a fresh record) or restore a backup of both"
)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Store:
    """An open krate database. Use `open_store()` to get one.

    `conn` is the plain sqlite3 connection the store modules query; `db` wraps it
    in sqlite-utils on first use (migrations, table helpers). `head_copy` is where
    the copy of the newest head lives (also for the empty store of a missing
    database, so verify can see that one is missing); `dir_fd`, the data folder a
    writable store was opened in, is where it is written.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path | None,
        *,
        readonly: bool,
        clock: Clock,
        head_copy: Path | None = None,
        dir_fd: int | None = None,
    ) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.clock = clock
        self.head_copy = head_copy
        self.dir_fd = dir_fd
        self._copy_fd: int | None = None
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = _wrap(self.conn)
        return self._db

    @property
    def schema_version(self) -> int:
        return len(_applied(self.conn))

    def close(self) -> None:
        self.conn.close()
        for fd in (self._copy_fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self._copy_fd = self.dir_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[Writer]:
        """One write transaction holding the write lock; appends and index rows commit together."""
        from krate.store.events import Writer

        if self.readonly:
            raise RuntimeError("write() on a read-only store")
        with translate_errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                writer = Writer(self)
                yield writer
                writer.flush_head()
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        if writer.appended:
            self._advance_copy(writer.start, writer.head)

    def catch_up_head_copy(self) -> None:
        """Bring a lagging head copy up to the newest head (before a prune removes its event)."""
        from krate.store.events import head

        self._advance_copy(None, head(self))

    def _advance_copy(self, start: Head | None, new: Head) -> None:
        if self.dir_fd is None:
            return
        if self._copy_fd is None:  # opened once per store, beside the database it was opened in
            self._copy_fd = headcopy.open_copy(self.dir_fd)
        if self._copy_fd is not None:
            headcopy.advance(self._copy_fd, self.conn, start, new)


def open_store(paths: Paths, *, readonly: bool = False, clock: Clock = utc_now) -> Store:
    """Open (creating and migrating when writing) the store under `paths`.

    A read-only open never creates or changes anything: with no database yet it
    returns an empty in-memory store, so read commands show "nothing yet".
    """
    path = paths.db_path
    copy = path.with_name(headcopy.NAME)
    if readonly and _imports_held() and not _current(path):
        _migrate_locked(paths)  # run/build before their lockdown: the store is theirs to write
    if readonly:
        if path.exists():
            conn = _connect_readonly(path)
            if _check_krate_db(conn, path, allow_pending=False):
                return Store(conn, path, readonly=True, clock=clock, head_copy=copy)
            conn.close()  # created by a krate that has not written its schema yet
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        schema.migration_set().apply(_wrap(conn))
        return Store(conn, None, readonly=True, clock=clock, head_copy=copy)

    ensure_private_dir(paths.data_dir)
    _create_private(path)
    conn = _connect(str(path), path)
    with translate_errors(path):
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
    _check_krate_db(conn, path, allow_pending=True)
    _migrate(conn, paths)
    for suffix in ("", "-wal", "-shm"):
        make_private_file(Path(str(path) + suffix))
    try:
        dir_fd = os.open(paths.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        conn.close()
        raise StoreError(f"cannot open {paths.data_dir}: {exc.strerror or exc}") from exc
    return Store(conn, path, readonly=False, clock=clock, head_copy=copy, dir_fd=dir_fd)


def _wrap(conn: sqlite3.Connection) -> Database:
    from sqlite_utils import Database

    # execute_plugins=False: sqlite-utils plugins would be a code-injection point.
    return Database(conn, execute_plugins=False)


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would honour the umask).

    SQLite gives the -wal and -shm files the same mode as the database file.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        os.close(fd)
    except PermissionError as exc:
        raise StoreError(
            f"cannot open {path}: permission denied; fix its permissions or set KRATE_HOME"
        ) from exc
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc


def _connect(target: str, path: Path, *, uri: bool = False) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    with translate_errors(path):
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection, also where krate may not write (a read-only data folder).

    Reading a WAL database needs its `-shm` file, which SQLite cannot create in a
    folder it may not write. With no WAL content pending (the normal state after
    krate exits), the main file is complete: it is then opened `immutable`.
    """
    conn = None
    try:
        conn = _connect(f"file:{path}?mode=ro", path, uri=True)
        with translate_errors(path):
            _tables(conn)  # the first read: it needs the -shm file
        return conn
    except StoreError:
        if conn is not None:
            conn.close()
        if not _wal_empty(path):
            raise
    return _connect(f"file:{path}?mode=ro&immutable=1", path, uri=True)


def _wal_empty(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _applied(conn: sqlite3.Connection) -> list[str]:
    if schema.TABLE not in _tables(conn):
        return []
    rows = conn.execute(
        f"SELECT name FROM {schema.TABLE} WHERE migration_set = ? ORDER BY id", (schema.SET_NAME,)
    ).fetchall()
    return [row[0] for row in rows]


def _check_krate_db(conn: sqlite3.Connection, path: Path, *, allow_pending: bool) -> bool:
    """Refuse foreign, corrupt or newer databases; False when the file has no schema yet."""
    with translate_errors(path):
        tables = _tables(conn)
        if not tables:
            return False
        if schema.TABLE not in tables:
            raise StoreError(
                f"{path} is not a krate database; move it aside or set KRATE_HOME to another folder"
            )
        applied = _applied(conn)
    known = schema.known_names()
    newer = [name for name in applied if name not in known]
    if newer:
        raise StoreError(
            f"{path} was written by a newer krate (schema {len(applied)}, this krate knows "
            f"{len(known)}); upgrade krate to read it"
        )
    if not allow_pending and len(applied) < len(known):
        raise StoreError(
            f"{path} uses an older schema; run any recording krate command "
            "(for example `krate audit note upgrade`) to upgrade it"
        )
    return True


def _imports_held() -> bool:
    """run/build before their lockdown: sqlite-utils (third-party) must not load here."""
    lockdown = sys.modules.get("krate.netguard.lockdown")
    return lockdown is not None and lockdown.imports_held()


def _current(path: Path) -> bool:
    """The database exists and has every migration (plain sqlite3: no sqlite-utils)."""
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        return set(schema.known_names()) <= set(_applied(conn))
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _migrate_locked(paths: Paths) -> None:
    """Create or migrate the store in a child process that locks itself down first.

    Migrations use sqlite-utils, a third-party package: in a process that has not
    locked down yet (run/build before their sandbox starts) it must not load, so a
    fresh interpreter (`-I -S`: no .pth files, given this process's import path)
    applies the lockdown, then opens the store as any command would, and exits.
    """
    import json
    import subprocess

    code = (
        f"import sys; sys.path[:] = {json.dumps([p for p in sys.path if p])}; "
        "from krate.store.connection import migrate_child; "
        f"sys.exit(migrate_child({str(paths.data_dir)!r}, {str(paths.config_dir)!r}))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", code],
            capture_output=True,
            text=True,
            timeout=BUSY_TIMEOUT_S + 60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"cannot prepare the database {paths.db_path}: {exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StoreError(lines[-1] if lines else f"cannot prepare the database {paths.db_path}")


def migrate_child(data_dir: str, config_dir: str) -> int:
    """The child of `_migrate_locked`: lockdown first, then the ordinary writable open."""
    from krate.netguard import lockdown

    lockdown.apply()
    try:
        open_store(Paths(Path(data_dir), Path(config_dir))).close()
    except StoreError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


def _migrate(conn: sqlite3.Connection, paths: Paths) -> None:
    path = paths.db_path
    with translate_errors(path):
        if set(schema.known_names()) <= set(_applied(conn)):
            return
    if _imports_held():
        _migrate_locked(paths)  # takes the write lock itself; this connection sees the result
        return
    with translate_errors(path):
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema.migration_set().apply(_wrap(conn))  # re-checks pending under the lock
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction, so every read inside sees the same state (unless one is open)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def query(
    store: Store, sql: str, params: Sequence[Any] = (), *, limit: int | None = None
) -> list[tuple]:
    """The rows of one read, SQLite's errors said plainly; `limit` keeps the first N."""
    if limit is not None:
        sql, params = f"{sql} LIMIT ?", (*params, limit)
    with translate_errors(store.path):
        return store.conn.execute(sql, params).fetchall()


@contextlib.contextmanager
def translate_errors(path: Path | None) -> Iterator[None]:
    """Turn SQLite's errors into messages that say which file and what to do."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        where = str(path) if path else "the database"
        if "not a database" in text or "malformed" in text:
            raise StoreError(
                f"{where} is corrupt or not a krate database ({text}); {DAMAGED_FIX}"
            ) from exc
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{where} is locked by another process for over {BUSY_TIMEOUT_S:.0f} s; "
                "wait for it to finish and try again"
            ) from exc
        if "readonly" in text or "read-only" in text:
            raise StoreError(
                f"{where} is read-only; fix its permissions or set KRATE_HOME"
            ) from exc
        if "full" in text or ("I/O error" in text and path and _no_space(path.parent)):
            raise StoreError(
                f"{where}: the disk is full; free some space or set KRATE_HOME to another folder"
            ) from exc
        if "unable to open" in text:
            raise StoreError(f"cannot open {where}; check the folder's permissions") from exc
        raise StoreError(f"{where}: {text}") from exc


def _no_space(folder: Path) -> bool:
    """Whether `folder`'s file system has no room left (SQLite reports that as an I/O error)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024
