"""The parent side of the egress proxy: read its decision stream, record it in batches.

Why batches: a burst of connections (npm opens dozens at once) must not
serialize on the database, so decisions are appended many per transaction
(at most `BATCH_MAX` or every `BATCH_SECONDS`). Why a journal: the proxy also
appends every decision line to a per-run journal file whose lock both
processes hold; when krate is killed, the next krate start (`recover`) records
whatever the killed one had not, so no completed connection is lost.

Runs in a thread of krate's own process with its own store connection. It
must never touch the network (it reads a pipe) or record more than the
metadata the proxy reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import threading
import time
from pathlib import Path
from typing import Any

from krate.paths import Paths, ensure_private_dir
from krate.store import egress as egress_store
from krate.store import open_store

BATCH_MAX = 200
BATCH_SECONDS = 0.2
RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
FIELDS = (
    "n",
    "protocol",
    "host",
    "port",
    "verdict",
    "rule",
    "layer",
    "reason",
    "address",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "started",
)


def event_data(line: dict[str, Any]) -> dict[str, Any]:
    """The event payload for one decision line: only known metadata fields pass."""
    data = {name: line.get(name) for name in FIELDS}
    data["area"] = egress_store.AREA
    host, port = line.get("host"), line.get("port")
    data["subject"] = f"{host}:{port}" if host is not None else None
    return data


def journal_path(paths: Paths, run_id: str) -> Path:
    if not RUN_ID.match(run_id):
        raise ValueError(f"unexpected run id {run_id!r}")
    return paths.egress_journals / f"{run_id}.jsonl"


def open_journal(paths: Paths, run_id: str) -> int:
    """Create the run's journal (0600) and lock it; the proxy inherits fd and lock."""
    ensure_private_dir(paths.egress_journals)
    fd = os.open(journal_path(paths, run_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Complete decision lines only (a torn last line from a kill is ignored)."""
    rows = []
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and line.get("type") == "decision":
                    rows.append(line)
    return rows


def reconcile(store, run_id: str, path: Path, recorded: set[int] | None = None) -> int:
    """Record journal lines not yet in the store, then delete the journal.

    `store` may be a function that opens the store: it is called (and the store
    closed again) only when something is missing, the rare case after a crash.
    """
    if recorded is None:
        recorded = egress_store.recorded_numbers(store, run_id)
    missing = [event_data(x) for x in read_journal(path) if x.get("n") not in recorded]
    if missing and callable(store):
        with store() as opened:
            egress_store.append_decisions(opened, run_id, missing)
    elif missing:
        egress_store.append_decisions(store, run_id, missing)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return len(missing)


def recover(paths: Paths) -> int:
    """Record decisions left in journals of killed runs (whose proxy is gone too)."""
    folder = paths.egress_journals
    if not folder.is_dir():
        return 0
    total = 0
    store = None
    try:
        for path in sorted(folder.glob("*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run (krate or its proxy) still holds it
                if store is None:
                    store = open_store(paths)
                total += reconcile(store, path.stem, path)
            finally:
                os.close(fd)
    finally:
        if store is not None:
            store.close()
    return total


class Recorder:
    """Reads the proxy's stdout in a thread; records decisions in batches."""

    def __init__(self, paths: Paths, run_id: str, stream_fd: int) -> None:
        self.paths = paths
        self.run_id = run_id
        self.fd = stream_fd
        self.ready = threading.Event()
        self.ready_line: dict[str, Any] | None = None
        self.closed_line: dict[str, Any] | None = None
        self.recorded: set[int] = set()
        self.counts = {"allow": 0, "deny": 0}
        self.error: BaseException | None = None
        self._pending: list[dict[str, Any]] = []
        self._store = None
        self._thread = threading.Thread(target=self._run, name="krate-egress-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        buffer = b""
        first_pending = 0.0
        try:
            while True:
                wait = None
                if self._pending:
                    wait = max(0.0, first_pending + BATCH_SECONDS - time.monotonic())
                readable, _, _ = select.select([self.fd], [], [], wait)
                if not readable:
                    self.flush()
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    if not self._pending:
                        first_pending = time.monotonic()
                    self._line(raw)
                if len(self._pending) >= BATCH_MAX:
                    self.flush()
            self.flush()
        except BaseException as exc:  # recorded by close(); the journal keeps the lines
            self.error = exc
        finally:
            self.ready.set()
            if self._store is not None:
                self._store.close()
                self._store = None

    def _line(self, raw: bytes) -> None:
        try:
            line = json.loads(raw)
        except ValueError:
            return
        kind = line.get("type") if isinstance(line, dict) else None
        if kind == "decision":
            self._pending.append(line)
        elif kind == "ready":
            self.ready_line = line
            self.ready.set()
        elif kind == "closed":
            self.closed_line = line

    def flush(self) -> None:
        """Append everything pending in one transaction."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._store is None:
            self._store = open_store(self.paths)
        egress_store.append_decisions(self._store, self.run_id, [event_data(x) for x in batch])
        for line in batch:
            self.recorded.add(line.get("n"))
            verdict = "allow" if line.get("verdict") == "allow" else "deny"
            self.counts[verdict] += 1
