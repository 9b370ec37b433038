"""The parent side of the egress proxy: read its decision stream, record it in batches.

Why batches: a burst of connections (npm opens dozens at once) must not
serialize on the database, so decisions are appended many per transaction
(at most `BATCH_MAX` or every `BATCH_SECONDS`). Why a journal: the proxy also
appends every decision line to a per-run journal file whose lock both
processes hold; when krate is killed, the next krate start (`recover`) records
whatever the killed one had not, so no completed connection is lost.

Why coalescing: a workload can open thousands of connections the policy
refuses (3,000 in 5 s took 3,001 events), flooding the record. The first denial
of each host and port in a run is recorded as it happens; the ones after it
are counted, and the count is recorded as one more decision event (`repeats`)
when the run ends. Past `DENIED_KEYS_MAX` distinct hosts and ports, new ones
are counted together (host None). Allowed connections are recorded one by one.

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
import threading
import time
from pathlib import Path

from krate.helper_process import LineReader
from krate.paths import Paths, ensure_private_dir

# krate.store (sqlite3) is imported where it is used: the run imports this module before it
# starts the proxy, and the proxy's start-up should not wait for sqlite3's import.

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from krate.store.connection import Store

BATCH_MAX = 200
BATCH_SECONDS = 0.2
DENIED_KEYS_MAX = 256
FURTHER = (object(), None)  # the key denials of further hosts are counted under
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
    "hint",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "started",
)


def event_data(line: dict[str, Any]) -> dict[str, Any]:
    """The event payload for one decision line: only known metadata fields pass."""
    from krate.store import egress as egress_store

    data = {name: line.get(name) for name in FIELDS}
    data["area"] = egress_store.AREA
    host, port = line.get("host"), line.get("port")
    # a name lookup the bridge's DNS refused has no port (egress/names.py)
    data["subject"] = None if host is None else f"{host}:{port}" if port is not None else host
    return data


class Coalescer:
    """Which denials to record now (the first per host and port) and how many repeated."""

    def __init__(self, firsts: dict[tuple, Any] | None = None) -> None:
        self.firsts: dict[tuple, Any] = dict(firsts or {})  # key -> `n` of the recorded one
        self.repeats: dict[tuple, dict[str, Any]] = {}  # key -> the count event's data

    def take(self, line: dict[str, Any]) -> bool:
        """True: record this decision line now; False: it was counted."""
        if line.get("verdict") == "allow":
            return True
        key = (line.get("host"), line.get("port"))
        if key not in self.firsts and len(self.firsts) >= DENIED_KEYS_MAX:
            key = FURTHER
        first = self.firsts.setdefault(key, line.get("n"))
        if first == line.get("n"):
            return True  # the first one (or the same line again, from the journal)
        count = self.repeats.get(key)
        if count is None:
            count = self.repeats[key] = {
                **event_data(line), "n": None, "repeats": 0, "first_n": line.get("n")
            }  # fmt: skip
            if key == FURTHER:
                count.update(host=None, port=None, subject="(further denied hosts)")
        count["repeats"] += 1
        count.update(last_n=line.get("n"), last_started=line.get("started"))
        return False

    def counted(self) -> list[dict[str, Any]]:
        """One decision event per host and port whose denials repeated: the final count."""
        out = []
        for data in self.repeats.values():
            row = {k: v for k, v in data.items() if k not in ("bytes_up", "bytes_down")}
            row.pop("duration_ms", None)
            out.append(row)
        self.repeats = {}
        return out


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


def reconcile(
    store: Store | Callable[[], Store], run_id: str, path: Path,
    recorded: set[int] | None = None, coalescer: Coalescer | None = None,
) -> int:  # fmt: skip
    """Record journal lines not yet in the store and the final counts, then delete the journal.

    `store` may be a function that opens the store: it is called (and the store
    closed again) only when something is missing, the rare case after a crash.
    Without `recorded` and `coalescer` (a killed run), both are read from the store.
    """
    from krate.store import egress as egress_store

    lines = read_journal(path)
    if coalescer is None:
        recorded, firsts, counted = egress_store.recorded_state(store, run_id)
        if counted:  # the run's counts were recorded: so was everything else in its journal
            lines = []
        coalescer = Coalescer(firsts)
    elif recorded is None:
        recorded = egress_store.recorded_numbers(store, run_id)
    missing = [x for x in lines if x.get("n") not in recorded]
    rows = [event_data(x) for x in missing if coalescer.take(x)] + coalescer.counted()
    if rows and callable(store):
        with store() as opened:
            egress_store.append_decisions(opened, run_id, rows)
    elif rows:
        egress_store.append_decisions(store, run_id, rows)
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
                    from krate.store import open_store

                    store = open_store(paths)
                total += reconcile(store, path.stem, path)
            finally:
                os.close(fd)
    finally:
        if store is not None:
            store.close()
    return total


class Recorder:
    """Reads the proxy's stdout in a thread (helper_process.LineReader); records in batches."""

    def __init__(self, paths: Paths, run_id: str, stream_fd: int) -> None:
        self.paths = paths
        self.run_id = run_id
        self.fd = stream_fd
        self.ready = threading.Event()
        self.ready_line: dict[str, Any] | None = None
        self.closed_line: dict[str, Any] | None = None
        self.recorded: set[int] = set()  # the proxy's `n` of every line recorded or counted
        self.counts = {"allow": 0, "deny": 0}
        self.coalescer = Coalescer()
        self._pending: list[dict[str, Any]] = []
        self._first_pending = 0.0
        self._store: Store | None = None
        self._reader = LineReader(
            stream_fd,
            self._line,
            name="krate-egress-recorder",
            wait=self._wait,
            on_wait=self.flush,
            on_end=self._end,
        )

    @property
    def error(self) -> BaseException | None:
        """What stopped the recording (the journal keeps the lines; close() records them)."""
        return self._reader.error

    def start(self) -> None:
        self._reader.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of the proxy's stream; False when it is still open."""
        return self._reader.join(timeout)

    def _wait(self) -> float | None:
        """Data is waited for as long as it takes, unless a batch is pending."""
        if not self._pending:
            return None
        return max(0.0, self._first_pending + BATCH_SECONDS - time.monotonic())

    def _end(self) -> None:
        try:
            if self._reader.error is None:
                self.flush()
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
            if self.coalescer.take(line):
                if not self._pending:
                    self._first_pending = time.monotonic()
                self._pending.append(line)
                if len(self._pending) >= BATCH_MAX:
                    self.flush()
            else:  # a repeated denial: counted, its count recorded when the run ends
                self.recorded.add(line.get("n"))
                self.counts["deny"] += 1
        elif kind == "ready":
            self.ready_line = line
            self.ready.set()
        elif kind == "closed":
            self.closed_line = line

    def flush(self) -> None:
        """Append everything pending in one transaction."""
        if not self._pending:
            return
        from krate.store import egress as egress_store
        from krate.store import open_store

        batch, self._pending = self._pending, []
        if self._store is None:
            self._store = open_store(self.paths)
        egress_store.append_decisions(self._store, self.run_id, [event_data(x) for x in batch])
        for line in batch:
            self.recorded.add(line.get("n"))
            verdict = "allow" if line.get("verdict") == "allow" else "deny"
            self.counts[verdict] += 1
