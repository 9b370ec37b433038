"""SQL for build records and stored artifacts (the `builds` and `artifacts` index tables).

The event chain is the source of truth; these rows are written in the same
transaction as their `build.recorded` / `artifact.stored` events. Only this module
knows the tables' columns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from krate.store.connection import query
from krate.store.events import data_of

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Writer

_BUILD_COLUMNS = (
    "id, run_id, name, created, exit_status, workdir, subjects, statement, statement_sha256"
)
_ARTIFACT_COLUMNS = "a.id, a.digest, a.size, a.name, a.build_id, a.stored_at, b.run_id"
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class BuildRow:
    id: str
    run_id: str | None
    name: str | None
    created: str
    exit_status: int
    workdir: str
    subjects: int
    statement: str  # the exact canonical bytes, as text
    statement_sha256: str

    def summary(self) -> dict[str, Any]:
        """Everything but the statement itself."""
        out = asdict(self)
        del out["statement"]
        return out

    def to_dict(self) -> dict[str, Any]:
        out = self.summary()
        out["statement"] = json.loads(self.statement)
        return out


@dataclass(frozen=True)
class ArtifactRow:
    id: int
    digest: str
    size: int
    name: str
    build_id: str
    stored_at: str
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["id"]
        return out


@dataclass(frozen=True)
class NewArtifact:
    digest: str
    size: int
    name: str
    new: bool


def insert_build(writer: Writer, build: BuildRow, artifacts: Sequence[NewArtifact]) -> None:
    """Index rows and their events, inside the caller's `store.write()` transaction."""
    conn = writer.store.conn
    conn.execute(
        f"INSERT INTO builds ({_BUILD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            build.id,
            build.run_id,
            build.name,
            build.created,
            build.exit_status,
            build.workdir,
            build.subjects,
            build.statement,
            build.statement_sha256,
        ),
    )
    conn.executemany(
        "INSERT INTO artifacts (digest, size, name, build_id, stored_at) VALUES (?, ?, ?, ?, ?)",
        [(a.digest, a.size, a.name, build.id, build.created) for a in artifacts],
    )


def _build(row: tuple) -> BuildRow:
    return BuildRow(*row)


def _artifact(row: tuple) -> ArtifactRow:
    return ArtifactRow(*row)


def list_builds(store: Store, limit: int | None = None) -> list[BuildRow]:
    """Newest last (like `audit list`); `limit` keeps the newest N."""
    sql = f"SELECT {_BUILD_COLUMNS} FROM builds ORDER BY created DESC, rowid DESC"
    return [_build(r) for r in reversed(query(store, sql, limit=limit))]


def get_build(store: Store, build_id: str) -> BuildRow | None:
    rows = query(store, f"SELECT {_BUILD_COLUMNS} FROM builds WHERE id = ?", (build_id,))
    return _build(rows[0]) if rows else None


def builds_with_prefix(store: Store, prefix: str, limit: int = 11) -> list[BuildRow]:
    sql = f"SELECT {_BUILD_COLUMNS} FROM builds WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"
    return [_build(r) for r in query(store, sql, (prefix, prefix + _TOP, limit))]


def last_build(store: Store) -> BuildRow | None:
    rows = query(
        store, f"SELECT {_BUILD_COLUMNS} FROM builds ORDER BY created DESC, rowid DESC LIMIT 1"
    )
    return _build(rows[0]) if rows else None


_ARTIFACTS_FROM = "FROM artifacts a LEFT JOIN builds b ON b.id = a.build_id"


def list_artifacts(store: Store, limit: int | None = None) -> list[ArtifactRow]:
    """Newest last; `limit` keeps the newest N."""
    sql = f"SELECT {_ARTIFACT_COLUMNS} {_ARTIFACTS_FROM} ORDER BY a.stored_at DESC, a.id DESC"
    return [_artifact(r) for r in reversed(query(store, sql, limit=limit))]


def artifacts_of_build(store: Store, build_id: str) -> list[ArtifactRow]:
    sql = f"SELECT {_ARTIFACT_COLUMNS} {_ARTIFACTS_FROM} WHERE a.build_id = ? ORDER BY a.name"
    return [_artifact(r) for r in query(store, sql, (build_id,))]


def artifacts_with_digest(store: Store, digest: str) -> list[ArtifactRow]:
    """Every record of this exact digest, newest first."""
    sql = (
        f"SELECT {_ARTIFACT_COLUMNS} {_ARTIFACTS_FROM} WHERE a.digest = ? "
        "ORDER BY a.stored_at DESC, a.id DESC"
    )
    return [_artifact(r) for r in query(store, sql, (digest,))]


def digests_with_prefix(store: Store, prefix: str, limit: int = 11) -> list[str]:
    """Distinct digests starting with `prefix` (`sha256:ab...`), at most `limit`."""
    sql = (
        "SELECT DISTINCT digest FROM artifacts WHERE digest >= ? AND digest < ? "
        "ORDER BY digest LIMIT ?"
    )
    return [r[0] for r in query(store, sql, (prefix, prefix + _TOP, limit))]


def artifacts_named(store: Store, name: str) -> list[ArtifactRow]:
    """Records with this exact name, newest first."""
    sql = (
        f"SELECT {_ARTIFACT_COLUMNS} {_ARTIFACTS_FROM} WHERE a.name = ? "
        "ORDER BY a.stored_at DESC, a.id DESC"
    )
    return [_artifact(r) for r in query(store, sql, (name,))]


def artifacts_name_ending(store: Store, tail: str) -> list[ArtifactRow]:
    """Records whose name ends with `/tail`, newest first: `app.tar.gz` finds `dist/app.tar.gz`."""
    sql = (
        f"SELECT {_ARTIFACT_COLUMNS} {_ARTIFACTS_FROM} "
        "WHERE substr(a.name, -?) = ? ORDER BY a.stored_at DESC, a.id DESC"
    )
    suffix = "/" + tail
    return [_artifact(r) for r in query(store, sql, (len(suffix), suffix))]


def recorded_digests(store: Store) -> list[tuple[str, int, list[str]]]:
    """Each distinct digest with its recorded size and the names it was recorded under."""
    rows = query(store, "SELECT digest, size, name FROM artifacts ORDER BY digest, id")
    out: dict[str, tuple[int, list[str]]] = {}
    for digest, size, name in rows:
        entry = out.setdefault(digest, (size, []))
        if name not in entry[1]:
            entry[1].append(name)
    return [(d, s, names) for d, (s, names) in out.items()]


def statement_digests_in_chain(store: Store) -> dict[str, str]:
    """build id -> statement_sha256 as written in the tamper-evident `build.recorded` events."""
    rows = query(
        store,
        "SELECT json_extract(data, '$.build_id'), json_extract(data, '$.statement_sha256') "
        "FROM events WHERE kind = 'build.recorded'",
    )
    return {r[0]: r[1] for r in rows if r[0]}


def crosscheck_builds(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: each builds row against its `build.recorded` event, and the reverse.

    The event holds the statement's SHA-256, so the statement text is checked by
    hashing it; exit status, working directory and subject count are checked
    against the statement. `created` (a moment just before the event) is not.
    """
    import hashlib

    recorded: dict[str, tuple[int, str | None, dict[str, Any]]] = {}
    for seq, run_id, data in conn.execute(
        "SELECT seq, run_id, data FROM events WHERE kind = 'build.recorded' ORDER BY seq"
    ):
        parsed = data_of(data)
        recorded[str(parsed.get("build_id"))] = (seq, run_id, parsed)
    n = 0
    for build_id, run_id, name, exit_status, workdir, subjects, statement, sha in conn.execute(
        "SELECT id, run_id, name, exit_status, workdir, subjects, statement, statement_sha256 "
        "FROM builds ORDER BY id"
    ):
        n += 1
        if build_id not in recorded:
            return n, f"builds row {build_id} has no build.recorded event"
        seq, event_run, data = recorded.pop(build_id)
        says = _statement_facts(statement)
        checks = {
            "run_id": (run_id, event_run),
            "name": (name, data.get("name")),
            "statement_sha256": (sha, data.get("statement_sha256")),
            "statement": (hashlib.sha256(str(statement).encode()).hexdigest(), sha),
            "exit_status": (exit_status, says.get("exit_status")),
            "workdir": (workdir, says.get("workdir")),
            "subjects": (subjects, says.get("subjects")),
        }
        for field, (actual, expected) in checks.items():
            if actual != expected:
                return n, f"builds row {build_id}: {field} is not what event {seq} records"
    for build_id, (seq, _, _) in recorded.items():
        return n, f"builds has no row for build {build_id} (recorded by event {seq})"
    return n, None


def _statement_facts(statement: str) -> dict[str, Any]:
    """Exit status, working directory and subject count as the provenance statement says."""
    doc = data_of(statement)
    predicate = doc.get("predicate") or {}
    definition = predicate.get("buildDefinition") or {}
    details = predicate.get("runDetails") or {}
    facts: dict[str, Any] = {
        "workdir": (definition.get("externalParameters") or {}).get("workingDirectory"),
        "subjects": len(doc.get("subject") or []),
    }
    for item in details.get("byproducts") or []:
        if isinstance(item, dict) and item.get("name") == "exitStatus":
            facts["exit_status"] = (item.get("annotations") or {}).get("exitStatus")
    return facts


def crosscheck_artifacts(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """For verify: the artifacts rows and the `artifact.stored` events are the same set
    (build, digest, name, size); each row's time is its build's."""
    from collections import Counter

    stored: Counter[tuple] = Counter()
    first_seq: dict[tuple, int] = {}
    for seq, data in conn.execute(
        "SELECT seq, data FROM events WHERE kind = 'artifact.stored' ORDER BY seq"
    ):
        parsed = data_of(data)
        key = tuple(parsed.get(k) for k in ("build_id", "digest", "name", "size"))
        stored[key] += 1
        first_seq.setdefault(key, seq)
    n = 0
    for build_id, digest, name, size, stored_at, created in conn.execute(
        "SELECT a.build_id, a.digest, a.name, a.size, a.stored_at, b.created "
        "FROM artifacts a LEFT JOIN builds b ON b.id = a.build_id ORDER BY a.id"
    ):
        n += 1
        key = (build_id, digest, name, size)
        if stored[key] <= 0:
            return n, f"artifacts row {name} ({digest}) of build {build_id} has no event"
        stored[key] -= 1
        if stored_at != created:
            return n, f"artifacts row {name} of build {build_id}: stored_at is not its build's time"
    for key, left in stored.items():
        if left > 0:
            return n, (
                f"artifacts has no row for {key[2]} ({key[1]}) of build {key[0]} "
                f"(stored by event {first_seq[key]})"
            )
    return n, None
