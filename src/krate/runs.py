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

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from krate import ids
from krate.errors import (
    EXIT_FAILURE,
    EXIT_KRATE_FAILED,
    EXIT_NOT_FOUND,
    KrateError,
    UsageError,
)
from krate.paths import Paths
from krate.policy import watch
from krate.printable import printable
from krate.records import NamedTuple
from krate.redact import redact_argv
from krate.run_prepare import Prepared, prepare
from krate.run_prepare import broad_workspace as broad_workspace  # the CLI's and tests' name
from krate.runs_read import list_runs as list_runs  # the callers' names: reading lives there
from krate.runs_read import show_run as show_run
from krate.sandbox import backend as backends
from krate.sandbox import leftovers, placeholders, procstart, supervise
from krate.sandbox.spec import SandboxSpec

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.egress import EgressSession
    from krate.policy.decide import EffectivePolicy
    from krate.sandbox.backend import Backend
    from krate.store.connection import Store

RUN_DIRS = leftovers.RUN_DIRS
PKG_SUFFIX = ".pkg"  # the run folder of the sanitized npm and pip settings


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
    # `krate run IMAGE`: the image (images/runtime.py ImageRun); argv is already its command.
    image: Any = None
    # The backend the command line chose (`--vm`); None: this machine's (backend.choose()).
    backend: Any = None


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
    # the run's recorded network denials (policy.decision data): krate/denials.py sums them up
    denials: tuple[dict[str, Any], ...] = ()
    # arguments naming host paths the sandbox does not show (path_hints.py)
    path_hints: tuple[str, ...] = ()


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
    backend = backend or request.backend or backends.choose()
    run_id = new_run_id()
    # 1 prepare: the proxy, if any, starts first: it imports while the run is prepared
    session, egress_failed = None, None
    try:
        session = _egress(policy, run_id, paths, backend)
    except KrateError as exc:  # e.g. its journal's folder: recorded as the run's failure below
        egress_failed = exc
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
    watcher = watch.Watch(spec.writable, since)  # lists ahead once the workload runs
    try:
        if prepared.refusal is not None:
            record.finish("refused", EXIT_KRATE_FAILED, str(prepared.refusal), 0.0)
            raise prepared.refusal
        try:
            if egress_failed is not None:
                raise egress_failed
            _check_command(spec, backend, policy)
            hints = _path_hints(spec, backend, policy)
            outcome = _launch(backend, policy, record, request.lock_down, session, watcher)
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
        written = watcher.finish()
        record.finish(
            outcome.status,
            outcome.exit_code,
            outcome.reason,
            outcome.duration_s,
            signals=supervise_names(outcome.forwarded),
            written=written,
        )
        denials = record.network_denials() if policy.net_rules else ()
    finally:
        watcher.stop()  # listing ahead ends with the run, however it ended
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
        denials=denials,
        path_hints=hints,
    )


def _check_command(spec: SandboxSpec, backend: Backend, policy: EffectivePolicy) -> None:
    """126/127 before launching, as the sandbox will see the command.

    A backend whose workload does not see the host's files (a micro-VM) finds the
    command itself, inside: its 126/127 are the workload's own status.
    """
    if not getattr(backend, "host_paths", True):
        return
    if spec.image is not None:
        from krate.images import runtime

        cwd = runtime.inside(spec.cwd, spec.workspace)
        runtime.find_command(spec.image, spec.argv[0], spec.env.get("PATH"), cwd, spec.workspace)
        return

    def visible(path: Path) -> bool:
        return backend.visible(path, spec)

    try:
        supervise.find_command(spec.argv[0], spec.env.get("PATH"), spec.cwd, visible)
    except KrateError as exc:
        # `krate run -- /tmp/tool`: there on the host, not in the sandbox; say which flag.
        from krate import path_hints

        hints = path_hints.missing(spec.argv[:1], spec.cwd, visible, policy.decide_read)
        if exc.exit_code != EXIT_NOT_FOUND or not hints:
            raise
        raise KrateError(f"{exc}; {hints[0]}", exit_code=exc.exit_code) from None


def _path_hints(spec: SandboxSpec, backend: Backend, policy: EffectivePolicy) -> tuple[str, ...]:
    """Hints for the arguments that name host paths the workload will not see."""
    from krate import path_hints

    def visible(path: Path) -> bool:
        return backend.visible(path, spec)

    return path_hints.missing(spec.argv[1:], spec.cwd, visible, policy.decide_read)


def _launch(
    backend: Backend,
    policy: EffectivePolicy,
    record: _RunRecord,
    lock_down: Callable[[], None] | None,
    session: EgressSession | None,
    watcher: watch.Watch | None = None,
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
            _package_state(spec, policy, record, backend) as spec,
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
            if watcher is not None:
                watcher.start()  # the writable folders listed while the workload runs
            outcome = sandbox.wait()  # 6 wait
            if session is not None:
                session.stop()  # its shutdown overlaps the sandbox's clean-up
    finally:
        if session is not None:
            session.close()  # every decision recorded before run.finished counts them
    if session is not None:
        session.check()
    return outcome


@contextlib.contextmanager
def _package_state(
    spec: SandboxSpec, policy: EffectivePolicy, record: _RunRecord, backend: Backend
) -> Iterator[SandboxSpec]:
    """The spec with the project's package caches and the sanitized npm and pip settings
    (sandbox/pkgcache.py, sandbox/pkgconfig.py); where the settings need files (no
    mounts), their run folder is removed afterwards."""
    from krate.sandbox import pkgcache

    if spec.image is not None:  # the image has its own home: the host's tool paths mean nothing
        yield spec
        return
    mounts = backend.capabilities().mounts
    home, environ = Path(policy.home), record.request.environ
    if spec.run_as is None:
        folder = pkgcache.prepare(record.paths.data_dir, spec.workspace)
        spec = pkgcache.apply(spec, folder=folder, home=home, environ=environ, mounts=mounts)
    if spec.run_as is not None or not _has_package_settings(home, environ):
        yield spec
        return
    from krate.sandbox import pkgconfig

    # A file the user's own policy hides stays hidden: no sanitized copy takes its place.
    own = [Path(r.path) for r in policy.deny_rules if not r.layer.startswith("builtin")]
    copies = pkgconfig.sanitized(home, environ, skip=own)
    if mounts:
        yield pkgconfig.mounted(spec, copies)
        return
    base = record.paths.data_dir / RUN_DIRS
    with leftovers.run_folder(base, record.run_id + PKG_SUFFIX) as folder:
        yield pkgconfig.named(spec, copies, folder)


def _has_package_settings(home: Path, environ: Mapping[str, str]) -> bool:
    """Whether any npm or pip settings file exists (else pkgconfig is not even imported)."""
    names = [home / ".npmrc", Path("/etc/pip.conf"), home / ".pip/pip.conf"]
    names += [home / ".config/pip/pip.conf", Path("/etc/xdg/pip/pip.conf")]
    for var in ("NPM_CONFIG_USERCONFIG", "npm_config_userconfig", "PIP_CONFIG_FILE"):
        if environ.get(var):
            names.append(Path(environ[var]))
    for var in ("XDG_CONFIG_HOME", "XDG_CONFIG_DIRS"):
        for folder in environ.get(var, "").split(":"):
            if folder:
                names.append(Path(folder) / "pip/pip.conf")
    if sys.platform == "darwin":
        names.append(home / "Library/Application Support/pip/pip.conf")
    return any(os.path.isfile(n) for n in names)


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

    def network_denials(self) -> tuple[dict[str, Any], ...]:
        """The network denials recorded for this run (the proxy's, and any other part's)."""
        if self.state != "started" or self.store is None:
            return ()
        from krate.store import runs as runs_store

        return tuple(
            d
            for d in runs_store.decisions(self.store, self.run_id)
            if d.get("verdict") == "deny" and d.get("area") == "network"
        )

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
        "policy": {
            "name": policy.name,
            "hash": policy.hash,
            # the opt-in that lets these allowed names resolve to private addresses
            **_private_ok(policy),
        },
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
    if request.image is not None:
        data["image"] = request.image.record()
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


def _private_ok(policy: EffectivePolicy) -> dict[str, Any]:
    rules = getattr(policy, "private_rules", ())
    return {"private_ok": [r.rule for r in rules]} if rules else {}


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
