"""Shared setup for the login/push tests: the registry account, records and artifacts.

The keychain in these tests is a real Secret Service (the `keychain` fixture,
tests/secret_service.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

USER = "alice"  # the registry account of the `registry` fixture (conftest.py)


def events(krate_home: Path, prefix: str = "") -> list[dict]:
    db = krate_home / "krate.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT kind, data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [{"kind": kind, **json.loads(data)} for kind, data in rows if kind.startswith(prefix)]


def make_artifact(
    workdir: Path, name: str = "dist/app.tar.gz", content: bytes | None = None, size: int = 0
):
    """Record a build with one output through the artifact store's own API.

    Returns (ArtifactRow, BuildRow). `size` writes a big file in bounded memory instead.
    """
    from tests.build_support import record_build

    if size:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        write_big(workdir / name, size)
        files = None
    else:
        files = {name: content if content is not None else os.urandom(200_000)}
    result = record_build(workdir, files, outs=(name.split("/")[0],))
    (artifact,) = [a for a in result.artifacts if a.name == name]
    return artifact, result.build


def write_big(path: Path, size: int) -> None:
    """A file of `size` pseudo-random bytes, written in 8 MiB pieces (bounded memory)."""
    block = os.urandom(8 << 20)
    with path.open("wb") as fh:
        left = size
        i = 0
        while left:
            piece = block[: min(len(block), left)]
            fh.write(i.to_bytes(8, "big") + piece[8:] if len(piece) > 8 else piece)
            left -= len(piece)
            i += 1
