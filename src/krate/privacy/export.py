"""The right of access and portability: everything krate holds, in one zip the user can read.

Tables are discovered, so what later features add is exported without changes
here (a line in TABLE_NOTES gives them a better description in the README).
Everything is read in one snapshot, written to a private temporary file beside
the target and linked into place, so an export is complete or absent and never
overwrites a file. Only the export's metadata is recorded, never its contents.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from krate import sha
from krate.errors import KrateError, UsageError
from krate.paths import Paths
from krate.privacy.places import EXPORTED_KIND as EXPORTED_KIND
from krate.privacy.places import config_files

if TYPE_CHECKING:
    import zipfile

    from krate.store import Store


# What each known table holds, for README.txt; tables not named here get a generic line.
TABLE_NOTES = {
    "chain_head": "the newest seq and hash of the event chain (detects a cut-off tail)",
    "_sqlite_migrations": "which schema migrations were applied, and when",
    "runs": "one row per `krate run` / `krate build`: command (secrets redacted), times, exit",
    "decisions": "policy decisions: what was asked, the answer, the rule and layer that gave it",
    "builds": "build records and their provenance statements (in-toto / SLSA)",
    "artifacts": "the artifact index: digest, size and name of every stored artifact",
    "pushes": "pushes to registries: artifact digest, registry host, result",
    "images": "image names: ref, config and manifest digests, layer digests, source",
    "policy_trust": "project policy files you trusted, by path and content hash",
    "trust": "project policy files you trusted, by path and content hash",
}

_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


@dataclass
class ExportResult:
    path: Path
    bytes: int
    sha256: str
    events: int
    head_seq: int
    head_hash: str
    tables: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    artifacts: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["path"] = str(self.path)
        return out


def check_target(out: Path, paths: Paths) -> Path:
    """The absolute target, or a clear error: never overwrite, never inside krate's folders."""
    out = Path(os.path.abspath(out))
    if os.path.lexists(out):
        raise KrateError(f"{out} already exists; krate never overwrites: choose another file name")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist; create it or choose another --out")
    for folder in {paths.data_dir, paths.config_dir}:
        if out.parent.resolve().is_relative_to(folder.resolve()):
            raise UsageError(
                f"{out} is inside krate's own folder {folder}; export somewhere else "
                "(a copy there would be deleted with your data)"
            )
    return out


def export(
    store: Store,
    paths: Paths,
    out: Path,
    *,
    with_artifacts: bool,
    now: datetime,
    version: str,
) -> ExportResult:
    """Write the export zip to `out` (which must not exist) and record `data.exported`."""
    import tempfile

    from krate.store import events

    out = check_target(out, paths)
    artifacts = artifact_files(paths) if with_artifacts else []
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            result = _write_zip(_Zip(raw, now), store, paths, out, artifacts, version)
            raw.flush()
            os.fsync(raw.fileno())
            raw.seek(0)
            result.sha256 = _sha256(raw)
            result.bytes = raw.tell()
        _link_into_place(temp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    events.append(
        store,
        EXPORTED_KIND,
        {
            "file": str(out),
            "bytes": result.bytes,
            "sha256": result.sha256,
            "events": result.events,
            "head_seq": result.head_seq,
            "tables": len(result.tables),
            "artifacts": result.artifacts,
            "with_artifacts": with_artifacts,
        },
    )
    return result


def _sha256(handle: IO[bytes]) -> str:
    digest = sha.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _link_into_place(temp: Path, out: Path) -> None:
    """Publish the finished file under its name without ever replacing an existing one."""
    try:
        os.link(temp, out)
        return
    except FileExistsError:
        raise KrateError(f"{out} appeared while exporting; krate never overwrites it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise KrateError(f"cannot write {out}: {exc.strerror or exc}") from exc
    # Filesystems without hard links (FAT, some network shares): claim the name, then replace.
    try:
        os.close(os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise KrateError(f"{out} appeared while exporting; krate never overwrites it") from None
    os.replace(temp, out)


class _Zip:
    """A zip writer that remembers each member's SHA-256 for the manifest."""

    def __init__(self, raw: IO[bytes], now: datetime) -> None:
        import zipfile  # here, not at the top: `krate data where` reads this module's names

        self.zip = zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED)
        self.now = now
        self.date_time = now.astimezone(UTC).timetuple()[:6]
        self.digests: dict[str, str] = {}

    def _info(self, name: str) -> zipfile.ZipInfo:
        import zipfile

        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        return info

    def write_lines(self, name: str, rows: Iterable[Any]) -> int:
        digest, n = sha.sha256(), 0
        with self.zip.open(self._info(name), "w", force_zip64=True) as member:
            for row in rows:
                line = (_LINE(row) + "\n").encode()
                member.write(line)
                digest.update(line)
                n += 1
        self.digests[name] = digest.hexdigest()
        return n

    def write_bytes(self, name: str, data: bytes) -> None:
        self.zip.writestr(self._info(name), data)
        self.digests[name] = sha.sha256(data).hexdigest()

    def write_file(self, name: str, path: Path) -> None:
        digest = sha.sha256()
        with (
            path.open("rb") as source,
            self.zip.open(self._info(name), "w", force_zip64=True) as member,
        ):
            for block in iter(lambda: source.read(1 << 20), b""):
                member.write(block)
                digest.update(block)
        self.digests[name] = digest.hexdigest()

    def close(self) -> None:
        self.zip.close()


def artifact_files(paths: Paths) -> list[Path]:
    root = paths.artifacts_dir / "sha256"
    return sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []


def _write_zip(
    archive: _Zip, store: Store, paths: Paths, out: Path, artifacts: list[Path], version: str
) -> ExportResult:
    from krate.store import events, inventory

    now = archive.now
    conn = store.conn
    inventory.snapshot(conn)
    try:
        head = events.head(store)
        tables = [t for t in inventory.tables(conn) if t != "events"]
        counts = inventory.table_counts(conn)
        configs = config_files(paths)
        archive.write_bytes(
            "README.txt",
            readme(now, version, head.seq, head.hash, tables, configs, len(artifacts)).encode(),
        )
        n_events = archive.write_lines(
            "events.jsonl", (e.to_dict() for e in events.iter_all(store))
        )
        for table in tables:
            archive.write_lines(f"tables/{table}.jsonl", inventory.iter_rows(conn, table))
    finally:
        inventory.end_snapshot(conn)
    for path in configs:
        archive.write_file(f"config/{path.name}", path)
    for path in artifacts:
        archive.write_file(f"artifacts/sha256/{path.name}", path)
    result = ExportResult(
        out,
        0,
        "",
        n_events,
        head.seq,
        head.hash,
        {t: counts.get(t, 0) for t in tables},
        [],
        len(artifacts),
    )
    manifest = {
        "format": "krate-export/1",
        "krate_version": version,
        "exported_at": events.format_ts(now),
        "chain_head": {"seq": head.seq, "hash": head.hash},
        "events": n_events,
        "tables": result.tables,
        "artifacts": len(artifacts),
        "files": dict(archive.digests),
    }
    archive.write_bytes("manifest.json", json.dumps(manifest, indent=2).encode() + b"\n")
    result.files = sorted(archive.digests)
    archive.close()
    return result


def readme(
    now: datetime,
    version: str,
    head_seq: int,
    head_hash: str,
    tables: list[str],
    configs: list[Path],
    artifacts: int,
) -> str:
    rows = [
        ("README.txt", "this file"),
        ("manifest.json", "time, krate version, chain head, counts, SHA-256 of every other file"),
        ("events.jsonl", "the event chain, oldest first, one JSON object per line"),
    ]
    rows += [(f"tables/{t}.jsonl", TABLE_NOTES.get(t, "rows of this krate table")) for t in tables]
    rows += [(f"config/{p.name}", _config_note(p.name)) for p in configs]
    if artifacts:
        rows.append(("artifacts/sha256/<hex>", f"{artifacts} stored artifacts, named by SHA-256"))
    width = max(len(name) for name, _ in rows)
    listing = "\n".join(f"  {name:<{width}}  {note}" for name, note in rows)
    return f"""krate data export
=================

Everything krate kept about your activity on this computer, exported
{now.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC by krate {version}.
Chain head at export: event {head_seq}, hash {head_hash}.

Files
-----
{listing}

Every .jsonl file holds one JSON object per line. In tables/, each object is a
row with the table's column names as keys; binary values appear as
{{"base64": "..."}}. krate never records environment variable values,
credentials, request bodies, URL paths or workload output, so none are here.

Events
------
Each event has seq, ts (UTC, ISO 8601), kind, run_id, data, prev_hash and hash:

  hash = SHA-256( prev_hash + "\\n" + JSON [seq, ts, kind, run_id, data] )

where the JSON is canonical (keys sorted, no spaces, UTF-8 unescaped) and the
first event's prev_hash is 64 zeros. If old events were pruned (`krate data
prune`), the first event follows the hash named by the newest `chain.checkpoint`
event instead. To check the chain with Python alone:

  import hashlib, json
  prev = None
  for line in open("events.jsonl", encoding="utf-8"):
      e = json.loads(line)
      body = json.dumps([e["seq"], e["ts"], e["kind"], e["run_id"], e["data"]],
                        sort_keys=True, separators=(",", ":"), ensure_ascii=False)
      assert prev is None or e["prev_hash"] == prev, e["seq"]
      assert hashlib.sha256((e["prev_hash"] + "\\n" + body).encode()).hexdigest() == e["hash"]
      prev = e["hash"]
  print("chain intact, head", prev)
"""


def _config_note(name: str) -> str:
    if name == "policy.toml":
        return "your user policy (TOML), as you wrote it"
    return "a file from krate's config folder, as stored"
