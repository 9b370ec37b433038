"""Forward-only schema migrations, applied in order and recorded by sqlite-utils.

Never edit a migration that has shipped: add a new one at the end. The number of
applied migrations is the schema version shown by `krate info`. sqlite-utils is
imported only when a migration is actually pending, so opening a current
database stays cheap (krate is called in shell loops).
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from sqlite_utils import Database

SET_NAME = "krate"
TABLE = "_sqlite_migrations"  # sqlite-utils' record of applied migrations
_REGISTERED: list[tuple[str, Callable[[Database], None]]] = []


def migrations(*, name: str) -> Callable:
    """Register a migration function under `name` (applied in registration order)."""

    def register(func: Callable[[Database], None]) -> Callable[[Database], None]:
        _REGISTERED.append((name, func))
        return func

    return register


def known_names() -> list[str]:
    return [name for name, _ in _REGISTERED]


def migration_set():
    """The sqlite-utils Migrations set with every registered migration."""
    from sqlite_utils.migrations import Migrations

    result = Migrations(SET_NAME)
    for name, func in _REGISTERED:
        result(name=name)(func)
    return result


@migrations(name="0001_events")
def m0001_events(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,
            run_id TEXT,
            data TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """
    )
    db["events"].create_index(["kind"], index_name="events_kind")
    db["events"].create_index(["run_id"], index_name="events_run_id")
    db["events"].create_index(["ts"], index_name="events_ts")
    # The head of the chain, kept apart from the events so that removing the
    # newest events is detected: it must always name the last event.
    db["chain_head"].create(
        {"id": int, "seq": int, "hash": str},
        pk="id",
        not_null={"seq", "hash"},
    )


@migrations(name="0002_policy_trust")
def m0002_policy_trust(db: Database) -> None:
    """Project policy files the user trusts: path and the SHA-256 of the exact bytes trusted."""
    db.execute(
        """
        CREATE TABLE policy_trust (
            path TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            trusted_at TEXT NOT NULL,
            seq INTEGER NOT NULL
        )
        """
    )


@migrations(name="0003_runs")
def m0003_runs(db: Database) -> None:
    """One row per `krate run` (index of its run.started / run.finished events)."""
    db.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            started TEXT NOT NULL,
            finished TEXT,
            duration_s REAL,
            status TEXT NOT NULL,
            exit_code INTEGER,
            reason TEXT,
            argv TEXT NOT NULL,
            cwd TEXT NOT NULL,
            workspace TEXT NOT NULL,
            backend TEXT NOT NULL,
            policy_name TEXT,
            policy_hash TEXT,
            krate_pid INTEGER,
            krate_start TEXT
        )
        """
    )
    db.execute("CREATE INDEX runs_started ON runs (started)")
    db.execute("CREATE INDEX runs_status ON runs (status)")


@migrations(name="0004_builds_artifacts")
def m0004_builds_artifacts(db: Database) -> None:
    """Index tables for `krate build`: one row per build record, one per stored output."""
    db.execute(
        """
        CREATE TABLE builds (
            id TEXT PRIMARY KEY,
            run_id TEXT,
            name TEXT,
            created TEXT NOT NULL,
            exit_status INTEGER NOT NULL,
            workdir TEXT NOT NULL,
            subjects INTEGER NOT NULL,
            statement TEXT NOT NULL,
            statement_sha256 TEXT NOT NULL
        )
        """
    )
    db["builds"].create_index(["created"], index_name="builds_created")
    db["builds"].create_index(["run_id"], index_name="builds_run_id")
    db["builds"].create_index(["name", "created"], index_name="builds_name")
    db.execute(
        """
        CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            name TEXT NOT NULL,
            build_id TEXT NOT NULL REFERENCES builds(id),
            stored_at TEXT NOT NULL
        )
        """
    )
    db["artifacts"].create_index(["digest"], index_name="artifacts_digest")
    db["artifacts"].create_index(["name", "stored_at"], index_name="artifacts_name")
    db["artifacts"].create_index(["build_id"], index_name="artifacts_build_id")
    db["artifacts"].create_index(["stored_at"], index_name="artifacts_stored_at")


@migrations(name="0005_pushes")
def m0005_pushes(db: Database) -> None:
    """Index for `krate push`: one row per push the registry accepted (see store/pushes.py)."""
    db.execute(
        """
        CREATE TABLE pushes (
            push_id TEXT PRIMARY KEY,
            artifact_digest TEXT NOT NULL,
            name TEXT NOT NULL,
            registry TEXT NOT NULL,
            repository TEXT NOT NULL,
            tag TEXT NOT NULL,
            manifest_digest TEXT NOT NULL,
            provenance_digest TEXT,
            referrers TEXT,
            bytes_sent INTEGER NOT NULL,
            pushed_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX pushes_artifact ON pushes (artifact_digest)")
    db.execute("CREATE INDEX pushes_pushed_at ON pushes (pushed_at)")


@migrations(name="0006_images")
def m0006_images(db: Database) -> None:
    """Index of image names (see store/images.py): one row per ref, several per image."""
    db.execute(
        """
        CREATE TABLE images (
            ref TEXT PRIMARY KEY,
            config_digest TEXT NOT NULL,
            manifest_digest TEXT,
            layers TEXT NOT NULL,
            source TEXT NOT NULL,
            added TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX images_config ON images (config_digest)")
