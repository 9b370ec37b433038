"""Forward-only schema migrations, applied in order and recorded by sqlite-utils.

Never edit a migration that has shipped: add a new one. The number of applied
migrations is the schema version shown by `krate info`.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

SET_NAME = "krate"
migrations = Migrations(SET_NAME)


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


def known_names() -> list[str]:
    return [m.name for m in migrations._migrations]
