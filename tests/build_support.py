"""Helpers for the build/artifact/provenance tests: record a build through the domain API.

`krate build` itself needs a real sandboxed run; these helpers record what a run
would report (RunFacts) so the store, records and commands are tested on their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from krate.paths import Paths
from krate.provenance import build as domain
from krate.store import open_store

_runs = iter(range(1, 10**6))


def write_tree(root: Path, files: Mapping[str, bytes | str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def facts(exit_status: int = 0, argv: list[str] | None = None, **kw) -> domain.RunFacts:
    start = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    values = dict(
        run_id=f"01TESTRUN{next(_runs):017d}",
        argv=argv or ["make", "dist"],
        started_on=start,
        finished_on=start + timedelta(seconds=3, microseconds=250),
        exit_status=exit_status,
        backend="bubblewrap",
        policy_name="default",
        policy_sha256="ab" * 32,
        decisions={"allowed": 2, "denied": 1},
    )
    values.update(kw)
    return domain.RunFacts(**values)


def record_build(
    workdir: Path,
    files: Mapping[str, bytes | str] | None = None,
    *,
    outs: tuple[str, ...] = ("dist",),
    inputs: tuple[str, ...] = (),
    name: str | None = None,
    run: domain.RunFacts | None = None,
) -> domain.BuildResult:
    """Write `files` under `workdir`, then record a build of `outs` as if CMD had made them."""
    workdir.mkdir(parents=True, exist_ok=True)
    if files:
        write_tree(workdir, files)
    paths = Paths.from_env(os.environ)
    prepared = domain.prepare(
        workdir=workdir, outs=outs, input_globs=inputs, name=name, environ=os.environ
    )
    with open_store(paths) as store:
        return domain.record(store, paths, prepared, run or facts())


def blob_dir(krate_home: Path) -> Path:
    return krate_home / "artifacts" / "sha256"
