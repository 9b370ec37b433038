"""One `krate run`: effective policy -> sandbox spec -> launch -> records.

The order matters and is the point of this module: every refusal (missing
backend, hard-linked secret, command not found) is decided and recorded before
anything runs; then `_launch` runs the launch sequence, top to bottom:

    1 prepare        the spec, wired to the egress proxy when the policy allows hosts
                     (the proxy's process starts before the spec is made, its start-up
                     overlapping that work; it gets its configuration here)
    2 start held     the sandbox starts, its workload held (by egress's bridge), or,
                     for a backend or run that cannot hold, nothing starts yet
    3 record started run.started is committed; if that fails nothing ever runs (125)
    4 release        the workload runs (or starts, when it could not be held)
    5 lock down      krate's own process loses the network (the CLI's lockdown)
    6 wait
    7 record finished, whatever happened

Runs whose krate was killed are marked `interrupted` at the next run and shown
so by readers. The run never asks which platform it is on: it asks its backend
(sandbox/backend.py).

Never prints and never reads os.environ: the CLI passes the environment in.
Stores names, paths and a redacted argv only, never environment values or output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from krate import ids
from krate.errors import EXIT_FAILURE, EXIT_KRATE_FAILED, KrateError, UsageError
from krate.paths import Paths
from krate.policy import watch
from krate.printable import printable
from krate.redact import redact_argv
from krate.run_prepare import Prepared, prepare
from krate.run_prepare import broad_workspace as broad_workspace  # the CLI's and tests' name
from krate.sandbox import backend as backends
from krate.sandbox import leftovers, placeholders, procstart, supervise
from krate.sandbox.spec import SandboxSpec

if TYPE_CHECKING:
    from krate.egress import EgressSession
    from krate.policy.decide import EffectivePolicy
    from krate.sandbox.backend import Backend
    from krate.store.connection import Store
    from krate.store.events import Event
    from krate.store.runs import RunRow

RUN_DIRS = leftovers.RUN_DIRS


def new_run_id(now_ms: int | None = None, rand: int | None = None) -> str:
    """16 characters, sortable by time (krate/ids.py)."""
    return ids.new_id(now_ms, rand)


class RunRequest(NamedTuple):
    argv: tuple[str, ...]
    cwd: Path
    workspace: Path
    environ: Mapping[str, str]
    allow_hardlinked_secrets: bool = False
    # `--as-root`: a root krate runs the workload as host root (sandbox/identity.py).
    as_root: bool = False
    allow_broad_workspace: bool = False
    # Step 5 of the launch: the CLI locks krate's own process out of the network (the
    # in-process test entry must not lock pytest down, so the CLI provides it).
    lock_down: Callable[[], None] | None = None


class RunResult(NamedTuple):
    run_id: str
    exit_code: int
    status: str
    reason: str | None
    duration_s: float
    stripped: list[str]
    hidden: list[str]
    notes: list[str]
    # krate.toml files written while the workload ran (they apply to later runs there)
    policy_files_changed: tuple[str, ...] = ()
    policy_files_checked: bool = True


# ---------------------------------------------------------------- running


def execute(
    paths: Paths,
    policy: EffectivePolicy,
    request: RunRequest,
    *,
    backend: Backend | None = None,
) -> RunResult:
    """Run `request.argv` under `policy`, recorded; return how it ended.

    `backend`: this machine's (sandbox/backend.py `choose()`) unless given.
    """
    if not request.argv:
        raise UsageError("give the command to run after `--`, e.g. krate run -- npm install")
    backend = backend or backends.choose()
    run_id = new_run_id()
    # 1 prepare: the proxy, if any, starts first: it imports while the run is prepared
    session = _egress(policy, run_id, paths, backend)
    try:
        leftovers.sweep_stale(paths.data_dir / RUN_DIRS)
        since = watch.clock()
        placeholders.sweep(paths.data_dir)
        prepared = prepare(policy, request, backend)
    except BaseException:
        if session is not None:
            session.close(timeout=2)
        raise
    spec = prepared.spec
    started_at = time.monotonic()
    record = _RunRecord(paths, run_id, policy, request, backend.name, prepared)
    try:
        if prepared.refusal is not None:
            record.finish("refused", EXIT_KRATE_FAILED, str(prepared.refusal), 0.0)
            raise prepared.refusal
        try:
            _check_command(spec, backend)
            outcome = _launch(backend, record, request.lock_down, session)
        except KrateError as exc:
            elapsed = time.monotonic() - started_at
            _krate_failed(exc)  # e.g. the egress journal's folder cannot be made
            record.finish("failed", exc.exit_code, str(exc), elapsed)
            raise
        except KeyboardInterrupt:
            # Ctrl-C before the launcher took over signals: krate exits 130, and says so.
            elapsed = time.monotonic() - started_at
            record.finish("interrupted", 130, "SIGINT received while the run started", elapsed)
            raise
        except BaseException as exc:
            elapsed = time.monotonic() - started_at
            reason = f"krate stopped: {type(exc).__name__}"
            record.finish("failed", EXIT_KRATE_FAILED, reason, elapsed)
            raise
        written = watch.written_since(spec.writable, since)
        record.finish(
            outcome.status,
            outcome.exit_code,
            outcome.reason,
            outcome.duration_s,
            signals=supervise_names(outcome.forwarded),
            written=written,
        )
    finally:
        if session is not None:
            session.close()  # done in _launch, unless the run never got there
        record.close()
    return RunResult(
        run_id=run_id,
        exit_code=outcome.exit_code,
        status=outcome.status,
        reason=outcome.reason,
        duration_s=outcome.duration_s,
        stripped=[s.name for s in prepared.stripped],
        hidden=[str(p) for p in spec.hidden],
        notes=prepared.notes,
        policy_files_changed=tuple(written.paths),
        policy_files_checked=written.complete,
    )


def _check_command(spec: SandboxSpec, backend: Backend) -> None:
    """126/127 before launching, as the sandbox will see the command."""

    def visible(path: Path) -> bool:
        return backend.visible(path, spec)

    supervise.find_command(spec.argv[0], spec.env.get("PATH"), spec.cwd, visible)


def _launch(
    backend: Backend,
    record: _RunRecord,
    lock_down: Callable[[], None] | None,
    session: EgressSession | None,
) -> supervise.Outcome:
    """The launch sequence (module docstring), steps 1 to 6; the caller records the end.

    Leaving the `with` by an exception (the run could not be recorded, Ctrl-C)
    stops the sandbox: a held workload never runs, a released one is killed.
    """
    paths, run_id, spec = record.paths, record.run_id, record.prepared.spec
    try:
        if session is not None:
            session.configure(None if spec.run_as is None else spec.run_as.uid)
            spec = session.apply(spec)
        with (
            supervise.terminal_kept(),
            backend.open(
                spec, run_id=run_id, data_dir=paths.data_dir, memory=record.prepared.memory
            ) as sandbox,
        ):
            sandbox.start(None if session is None else session.gate)  # 2 start held
            record.start()  # 3 record started
            sandbox.release()  # 4 release
            if lock_down is not None:
                lock_down()  # 5 lock down
            outcome = sandbox.wait()  # 6 wait
    finally:
        if session is not None:
            session.close()  # every decision recorded before run.finished counts them
    if session is not None:
        session.check()
    return outcome


def _egress(
    policy: EffectivePolicy, run_id: str, paths: Paths, backend: Backend
) -> EgressSession | None:
    """The run's egress proxy when the policy allows any host, started before the run is
    prepared; `_launch` sends its configuration (`configure`) once the sandbox's user is known.

    A run without network skips loading krate.egress unless a killed run left
    decisions in a journal, which `egress.spawn_early` records first.
    """
    if not policy.net_rules and not _has_entries(paths.egress_journals):
        return None
    from krate import egress

    return egress.spawn_early(policy, run_id, paths, backend.capabilities())


def _krate_failed(exc: KrateError) -> None:
    """A failure of krate's own around the workload exits 125, not 1 (DESIGN.md)."""
    if exc.exit_code == EXIT_FAILURE:
        exc.exit_code = EXIT_KRATE_FAILED


class _RunRecord:
    """The run's row and events, with the store opened on first use.

    `start()` (run.started and the decisions made so far) is step 3 of the launch:
    after the sandbox started held, before the workload is released.
    """

    def __init__(
        self, paths: Paths, run_id: str, policy: EffectivePolicy, request: RunRequest,
        backend: str, prepared: Prepared,
    ) -> None:  # fmt: skip
        self.paths, self.run_id, self.policy, self.request = paths, run_id, policy, request
        self.backend, self.prepared = backend, prepared
        self.store: Store | None = None
        self.state = "new"  # new | started | failed

    def start(self) -> None:
        if self.state != "new":
            return
        from krate.store import open_store

        self.state = "failed"  # until it worked: a store that failed once is not retried
        try:
            self.store = open_store(self.paths)
            mark_interrupted(self.store)
            _record_start(
                self.store, self.run_id, self.policy, self.request, self.backend, self.prepared
            )
        except KrateError as exc:  # e.g. a data folder that cannot be written: 125
            _krate_failed(exc)
            raise
        self.state = "started"

    def finish(self, status: str, exit_code: int, reason: str | None, duration_s: float,
               *, signals: list[str] | None = None,
               written: watch.Written | None = None) -> None:  # fmt: skip
        self.start()
        if self.state == "started" and self.store is not None:
            _record_finish(
                self.store, self.run_id, status, exit_code, reason, duration_s, signals=signals,
                written=written,
            )  # fmt: skip

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def supervise_names(signals: Sequence[int]) -> list[str]:
    import signal

    return [signal.Signals(s).name for s in signals]


# ---------------------------------------------------------------- records


def _record_start(
    store: Store,
    run_id: str,
    policy: EffectivePolicy,
    request: RunRequest,
    backend: str,
    prepared: Prepared,
) -> None:
    from krate.store import runs as runs_store

    pid = os.getpid()
    argv = redact_argv(request.argv)
    data = {
        "argv": argv,
        "cwd": str(request.cwd),
        "workspace": str(prepared.spec.workspace),
        "backend": backend,
        "policy": {"name": policy.name, "hash": policy.hash},
        "limits": prepared.spec.limits.to_dict(),
        "layout": {
            **prepared.spec.layout(),
            # the egress proxy (krate.egress) serves the workload when the policy allows hosts
            "network": "proxy" if policy.network_allow else "none",
            **({"kernel": prepared.kernel} if prepared.kernel is not None else {}),
        },
        "ignored": list(policy.ignored),
        "notes": prepared.notes,
        "krate_pid": pid,
        **prepared.identity,
    }
    row = {
        "argv": argv,
        "cwd": str(request.cwd),
        "workspace": str(prepared.spec.workspace),
        "backend": backend,
        "policy_name": policy.name,
        "policy_hash": policy.hash,
        "krate_pid": pid,
        "krate_start": procstart.identity(pid),
    }
    data, row = printable(data), printable(row)
    with store.write() as writer:
        event = writer.append("run.started", data, run_id)
        runs_store.insert_started(writer, run_id, event, row)
        for decision in prepared.decisions:
            writer.append("policy.decision", printable(decision), run_id)


def _record_finish(
    store: Store,
    run_id: str,
    status: str,
    exit_code: int,
    reason: str | None,
    duration_s: float,
    *,
    signals: list[str] | None = None,
    written: watch.Written | None = None,
) -> None:
    from krate.store import runs as runs_store

    data: dict[str, Any] = {
        "status": status,
        "exit_code": exit_code,
        "duration_s": round(duration_s, 6),
    }
    if reason:
        data["reason"] = reason = printable(reason)
    if signals:
        data["signals_forwarded"] = signals
    # In run.finished, not an event of its own: found by the same look that ends the run,
    # committed with its outcome, and shown by `runs show` beside it.
    if written is not None and written.paths:
        data["policy_files_changed"] = written.paths
    if written is not None and not written.complete:
        data["policy_files_checked"] = f"only the first {watch.MAX_ENTRIES} entries"
    with store.write() as writer:
        event = writer.append("run.finished", data, run_id)
        runs_store.update_finished(
            writer,
            run_id,
            event,
            status=status,
            exit_code=exit_code,
            reason=reason,
            duration_s=round(duration_s, 6),
        )


def mark_interrupted(store: Store) -> list[str]:
    """Record `run.interrupted` for runs whose krate process is gone; return their ids."""
    from krate.store import runs as runs_store

    if not runs_store.running(store):
        return []
    marked = []
    with store.write() as writer:
        for row in runs_store.running(store):
            if leftovers.alive(row.krate_pid, row.krate_start):
                continue
            reason = "krate was killed before the run finished"
            event = writer.append(
                "run.interrupted", {"status": "interrupted", "reason": reason}, row.id
            )
            runs_store.update_finished(
                writer, row.id, event, status="interrupted", exit_code=None, reason=reason,
                duration_s=None,
            )  # fmt: skip
            marked.append(row.id)
    return marked


# ---------------------------------------------------------------- reading


def _effective(row: RunRow) -> RunRow:
    if row.status == "running" and not leftovers.alive(row.krate_pid, row.krate_start):
        return row._replace(status="interrupted", reason="krate was killed before the run finished")
    return row


def list_runs(paths: Paths, limit: int | None = None) -> list[RunRow]:
    """Newest first; runs whose krate is gone show as interrupted."""
    from krate.store import open_store
    from krate.store import runs as runs_store

    with open_store(paths, readonly=True) as store:
        return [_effective(r) for r in runs_store.list_runs(store, limit)]


def show_run(paths: Paths, ref: str) -> tuple[RunRow, list[dict[str, Any]], list[Event]]:
    """One run (by id, unique id prefix or `last`), its decisions and its events."""
    from krate.store import events, open_store
    from krate.store import runs as runs_store

    with open_store(paths, readonly=True) as store:
        found = ids.resolve(
            ref,
            "run",
            last=lambda: next(iter(runs_store.list_runs(store, 1)), None),
            exact=lambda run_id: runs_store.get_run(store, run_id),
            prefixed=lambda prefix: runs_store.runs_with_prefix(store, prefix),
            none_yet="no runs yet",
            listing="krate runs list",
        )
        row = _effective(found)
        decisions = runs_store.decisions(store, row.id)
        run_events = events.query(store, run_id=row.id)
    return row, decisions, run_events
