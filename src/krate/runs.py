"""One `krate run`: effective policy -> sandbox spec -> launch -> records.

The order matters and is the point of this module: every refusal (missing
backend, hard-linked secret, command not found) is decided and recorded before
anything runs; `run.started` is committed before the workload runs (behind the
Linux egress bridge, while the sandbox starts: the bridge holds the workload
until then); the workload is started in exactly one place (`_spawn`) so that
later code can bracket it (krate locks its own network away only after the
sandbox exists); `run.finished` is appended whatever happened. Runs whose krate
was killed are marked `interrupted` at the next run and shown so by readers.

Never prints and never reads os.environ: the CLI passes the environment in.
Stores names, paths and a redacted argv only, never environment values or output.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from krate import ids
from krate.errors import EXIT_FAILURE, EXIT_KRATE_FAILED, KrateError, UsageError
from krate.paths import Paths
from krate.policy import watch
from krate.printable import printable
from krate.redact import redact_argv
from krate.sandbox import detect as detect_mod
from krate.sandbox import placeholders, supervise
from krate.sandbox.env import Stripped, scrub
from krate.sandbox.spec import SandboxSpec, build, is_within

RUN_DIRS = "run"


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
    # Called once the sandbox (and the egress proxy) exist: the CLI locks krate's own
    # process out of the network there.
    after_start: Callable[[], None] | None = None


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


class _Prepared(NamedTuple):
    spec: SandboxSpec
    stripped: list[Stripped]
    decisions: list[dict[str, Any]]
    refusal: KrateError | None
    notes: list[str]
    identity: dict[str, Any] = {}  # for run.started: {"as_root": true} or {"run_as": {...}}
    memory: Any = None  # where limits.memory_mb is enforced (a cgroup.Place), if set
    # What the kernel refuses the workload beyond the namespaces (Linux), for the record.
    kernel: dict[str, Any] | None = None


# ---------------------------------------------------------------- preparing


def _env_decider(policy: Any):
    """The policy's env decision, and "did the user pass this name explicitly" for value checks."""

    def passed(name: str) -> bool:
        # A built-in keep (CA bundle paths) is not the user's say-so: values are still checked.
        decision = policy.decide_env(name)
        return decision.verdict == "allow" and not decision.layer.startswith("builtin")

    return policy.decide_env, passed


def prepare(policy: Any, request: RunRequest, backend: str, euid: int | None = None) -> _Prepared:
    """The spec, the environment decisions and any refusal, before anything is recorded."""
    from krate.sandbox import hardlinks, identity, sockets

    tmpdir = "/tmp"
    decide, passed = _env_decider(policy)
    env, stripped = scrub(request.environ, decide, passed, tmpdir=tmpdir, sockets=sockets.named)
    who = identity.choose(
        Path(os.path.realpath(policy.workspace)),
        Path(os.path.realpath(request.cwd)),
        as_root=request.as_root,
        euid=os.geteuid() if euid is None else euid,
        backend=backend,
    )
    hide_also = _hide_also(request.environ, stripped, policy.workspace, backend)
    if who.run_as is not None:  # the owner's own secret stores too, not only the caller's
        home = Path(os.path.realpath(policy.home))
        hide_also += identity.home_equivalents(policy.deny_read, home, who.run_as)
    spec = build(
        argv=request.argv,
        cwd=request.cwd,
        workspace=policy.workspace,
        allow_write=policy.allow_write,
        read_only=policy.read_only,
        deny_read=[rule.path for rule in policy.deny_rules],
        env=env,
        limits=policy.limits,
        hide_also=hide_also,
        resolver=getattr(policy, "resolver", None),
    )._replace(run_as=who.run_as)
    decisions = [s.to_decision() for s in stripped]
    if who.decision is not None:
        decisions.append(who.decision)
    notes = list(policy.ignored)
    spec, refusals = _check_writable(policy, request, spec, decisions)
    refusal = who.refusal
    if refusal is None and refusals:
        refusal = KrateError(refusals[0], exit_code=EXIT_KRATE_FAILED)
    kernel = _kernel(backend, notes)
    scan = hardlinks.scan(spec.hidden, hardlinks.MAX_ENTRIES)
    if not scan.complete:
        notes.append(
            f"hard-link check: more than {hardlinks.MAX_ENTRIES} entries under hidden paths; "
            "past them every file with more than one link counts as linked"
        )
    for path in scan.linked:
        if request.allow_hardlinked_secrets:
            decisions.append(_hardlink_decision(path, "allow", "--allow-hardlinked-secrets"))
        else:
            decisions.append(_hardlink_decision(path, "deny", "hidden file has other hard links"))
    if scan.linked and not request.allow_hardlinked_secrets and refusal is None:
        names = ", ".join(str(p) for p in scan.linked[:5])
        more = f" and {len(scan.linked) - 5} more" if len(scan.linked) > 5 else ""
        refusal = KrateError(
            f"refusing to run: {names}{more} is hidden by the policy but has other hard links "
            "(another name for the same file may be readable in the sandbox); remove the extra "
            "links or pass --allow-hardlinked-secrets to accept the risk",
            exit_code=EXIT_KRATE_FAILED,
        )
    memory = None
    if spec.limits.memory_mb is not None and backend == "bubblewrap" and refusal is None:
        memory, refusal = _memory_place(policy, spec.limits.memory_mb)
        if memory is not None:
            notes.append(f"limits.memory_mb enforced by a per-run {memory.describe()}")
    return _Prepared(spec, stripped, decisions, refusal, notes, who.record, memory, kernel)


def _memory_place(policy: Any, limit_mb: int) -> tuple[Any, KrateError | None]:
    """The cgroup place for the memory limit, or the refusal: a limit krate cannot enforce."""
    from krate.sandbox import cgroup

    place = cgroup.find()
    if place is not None:
        return place, None
    layer = dict(getattr(policy, "limit_layers", ())).get("memory_mb")
    where = f" (from the {layer} layer)" if layer else ""
    return None, KrateError(
        f"refusing to run: limits.memory_mb = {limit_mb}{where} cannot be enforced here: no "
        "cgroup with the memory controller is delegated to this user, and a per-process "
        "limit does not count tmpfs files or shared memory; remove limits.memory_mb, or run "
        "krate where a cgroup is delegated (as root, or in a systemd user session: "
        "`systemd-run --user --scope krate run ...`); `krate doctor` checks it",
        exit_code=EXIT_KRATE_FAILED,
    )


def _hide_also(
    environ: Mapping[str, str], stripped: list[Stripped], workspace: Path, backend: str
) -> list:
    """Paths hidden beyond the policy's: what the workload could reach the caller's secrets by.

    The socket each stripped variable names (an agent answers whoever connects, even
    on a read-only mount); `XDG_RUNTIME_DIR` when it is not under the emptied `/run`;
    and on Linux the kernel's lists of the user's keys. Only paths are recorded (in
    the layout, like every hidden path), never the rest of a variable's value.
    """
    from krate.sandbox import keyrings, sockets

    hide = [path for s in stripped for path in sockets.named(environ.get(s.name, ""))]
    runtime = sockets.runtime_dir(environ.get("XDG_RUNTIME_DIR"), str(workspace), os.geteuid())
    if runtime is not None:
        hide.append(runtime)
    if backend == "bubblewrap":
        hide += keyrings.PROC_FILES
    return hide


def _kernel(backend: str, notes: list[str]) -> dict[str, Any] | None:
    """The seccomp filter and session keyring krate gives a Linux workload, or a note why not."""
    if backend != "bubblewrap":
        return None
    from krate.sandbox import seccomp

    if not seccomp.supported():
        notes.append("no seccomp filter for this CPU: keyrings and vsock are not refused")
        return {"seccomp": [], "session_keyring": "inherited"}
    return {"seccomp": seccomp.describe(), "session_keyring": "new"}


def _hardlink_decision(path: Path, verdict: str, rule: str) -> dict[str, Any]:
    return {
        "area": "filesystem",
        "verdict": verdict,
        "rule": rule,
        "layer": "flags" if verdict == "allow" else "builtin",
        "subject": str(path),
    }


def _check_writable(
    policy: Any, request: RunRequest, spec: SandboxSpec, decisions: list[dict[str, Any]]
) -> tuple[SandboxSpec, list[str]]:
    """Refusals about what the workload could write (each recorded as a decision), and the
    spec with git's own files kept read-only."""
    refusals: list[str] = []
    broad = broad_workspace(policy, spec.workspace)
    if broad and request.allow_broad_workspace:
        decisions.append(_fs_decision(spec.workspace, "allow", "--allow-broad-workspace", "flags"))
    elif broad:
        decisions.append(_fs_decision(spec.workspace, "deny", f"workspace {broad}", "builtin"))
        refusals.append(
            f"refusing to run: the workspace {spec.workspace} {broad}, so the workload could "
            "change any file in it (such as ~/.bashrc); run it in a project folder "
            "(cd there, or --workdir DIR), or pass --allow-broad-workspace to accept this"
        )
    for link in policy.write_links:
        if not is_within(Path(link.path), spec.workspace):
            decisions.append(_fs_decision(Path(link.literal), "deny", link.rule, link.layer))
            refusals.append(
                f"refusing to run: {link.rule}: {link.literal} leads through a symbolic link to "
                f"{link.path}, outside the workspace (a workload may have planted the link); "
                f"name the real path ({link.path}) if you mean to allow writing there"
            )
    spec, guarded = _guard_git(spec)
    for path, why in guarded:
        decisions.append(_fs_decision(path, "deny", "git folder cannot be kept read-only"))
        refusals.append(f"refusing to run: {why}")
    return spec, refusals


def _fs_decision(path: Path, verdict: str, rule: str, layer: str = "builtin") -> dict[str, Any]:
    return {"area": "filesystem", "verdict": verdict, "rule": rule, "layer": layer,
            "subject": str(path)}  # fmt: skip


def broad_workspace(policy: Any, workspace: Path) -> str | None:
    """Why `workspace` is too broad to be writable (None when it is a normal folder).

    Too broad: `/`, the home folder, or a folder holding a secret store the built-in
    profile hides (such as `/home` or `/Users`). Hidden paths the user added
    (`--deny-read secrets`) are fine inside a workspace.
    """
    from krate.policy import paths as policy_paths

    ws = str(workspace)
    home = policy_paths.resolve(str(policy.home))
    if ws == "/":
        return "is the root folder"
    if ws == home:
        return "is your home folder"
    if policy_paths.under(home, ws):
        return f"holds your home folder {home}"
    for rule in policy.deny_rules:
        secret = rule.layer.startswith("builtin:")
        if secret and rule.path != ws and policy_paths.under(rule.path, ws):
            return f"holds {rule.path}, which is hidden from workloads"
    return None


def _guard_git(spec: SandboxSpec) -> tuple[SandboxSpec, tuple[tuple[Path, str], ...]]:
    """The spec with git's own files kept read-only in every writable git folder."""
    from krate.sandbox import gitguard

    guard = gitguard.inspect(spec.writable, spec.read_only, spec.hidden)
    if not (guard.read_only or guard.pins or guard.writable):
        return spec, guard.refusals
    pinned = tuple(p.path for p in guard.pins)
    spec = spec._replace(
        writable=tuple(dict.fromkeys((*spec.writable, *guard.writable))),
        declared_writable=tuple(dict.fromkeys((*spec.declared_writable, *guard.writable))),
        read_only=tuple(dict.fromkeys((*spec.read_only, *guard.read_only, *pinned))),
        declared_read_only=tuple(
            dict.fromkeys((*spec.declared_read_only, *guard.read_only, *pinned))
        ),
        pins=guard.pins,
    )
    return spec, guard.refusals


# ---------------------------------------------------------------- running


def execute(
    paths: Paths,
    policy: Any,
    request: RunRequest,
    *,
    platform: str = sys.platform,
    detect_path: str | None = None,
) -> RunResult:
    """Run `request.argv` under `policy`, recorded; return how it ended."""
    if not request.argv:
        raise UsageError("give the command to run after `--`, e.g. krate run -- npm install")
    found = detect_mod.detect(path=detect_path, platform=platform)
    if not found.available:
        raise KrateError(
            f"the {found.backend} sandbox is not available: {found.install_hint}",
            exit_code=EXIT_KRATE_FAILED,
        )
    supervise.sweep_stale(paths.data_dir / RUN_DIRS)
    since = watch.clock()
    placeholders.sweep(paths.data_dir)
    prepared = prepare(policy, request, found.backend)
    spec = prepared.spec
    run_id = new_run_id()
    started_at = time.monotonic()
    record = _RunRecord(paths, run_id, policy, request, found.backend, prepared)
    try:
        if prepared.refusal is not None:
            record.finish("refused", EXIT_KRATE_FAILED, str(prepared.refusal), 0.0)
            raise prepared.refusal
        try:
            _check_command(spec, found.backend)

            def spawn(s: SandboxSpec, go: Callable[[], None] | None = None) -> supervise.Outcome:
                with supervise.terminal_kept():
                    after = _in_turn(go, request.after_start)
                    return _spawn(s, found, run_id, paths, after, memory=prepared.memory)

            outcome = _with_egress(policy, run_id, paths, spec, spawn, platform, record.start)
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


def _krate_failed(exc: KrateError) -> None:
    """A failure of krate's own around the workload exits 125, not 1 (DESIGN.md)."""
    if exc.exit_code == EXIT_FAILURE:
        exc.exit_code = EXIT_KRATE_FAILED


class _RunRecord:
    """The run's row and events, with the store opened on first use.

    `start()` (run.started and the decisions made so far) always comes before the
    workload runs: before the launch, or, for a run behind the Linux egress bridge,
    while the sandbox starts, the bridge holding the workload until it returns.
    """

    def __init__(
        self, paths: Paths, run_id: str, policy: Any, request: RunRequest, backend: str,
        prepared: _Prepared,
    ) -> None:  # fmt: skip
        self.paths, self.run_id, self.policy, self.request = paths, run_id, policy, request
        self.backend, self.prepared = backend, prepared
        self.store: Any = None
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
               *, signals: list[str] | None = None, written: Any = None) -> None:  # fmt: skip
        self.start()
        if self.state == "started":
            _record_finish(
                self.store, self.run_id, status, exit_code, reason, duration_s, signals=signals,
                written=written,
            )  # fmt: skip

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _in_turn(*steps: Callable[[], None] | None) -> Callable[[], None]:
    def run() -> None:
        for step in steps:
            if step is not None:
                step()

    return run


def _with_egress(
    policy: Any,
    run_id: str,
    paths: Paths,
    spec: SandboxSpec,
    spawn: Callable[..., supervise.Outcome],
    platform: str,
    record_start: Callable[[], None],
) -> supervise.Outcome:
    """Spawn behind the egress proxy when the policy allows any host.

    A run without network skips loading krate.egress unless a killed run left
    decisions in a journal, which spawn_with records first.
    """
    if not policy.net_rules and not _has_entries(paths.egress_journals):
        record_start()
        return spawn(spec)
    from krate import egress

    return egress.spawn_with(
        policy, run_id, paths, spec, spawn, platform=platform, record_start=record_start
    )


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def supervise_names(signals: Sequence[int]) -> list[str]:
    import signal

    return [signal.Signals(s).name for s in signals]


def _check_command(spec: SandboxSpec, backend: str) -> None:
    """126/127 before launching, as the sandbox will see the command."""
    if backend == "bubblewrap":
        from krate.sandbox.bwrap import visible_inside

        def visible(path: Path) -> bool:
            return visible_inside(path, spec)
    else:
        from krate.sandbox.seatbelt import visible_inside as seatbelt_visible

        def visible(path: Path) -> bool:
            return seatbelt_visible(path, spec)

    supervise.find_command(spec.argv[0], spec.env.get("PATH"), spec.cwd, visible)


def _spawn(
    spec: SandboxSpec,
    found: Any,
    run_id: str,
    paths: Paths,
    after_start: Callable[[], None] | None = None,
    *,
    memory: Any = None,
) -> supervise.Outcome:
    """The one place the workload starts. Everything before it may still use the network."""
    from krate.sandbox import limits

    argv = limits.wrap_argv(spec.limits, list(spec.argv))
    spec = _with_argv(spec, argv)
    preexec = limits.preexec(spec.limits)
    if found.backend == "bubblewrap":
        from krate.sandbox import bwrap, keyrings

        def launch(preexec: Callable[[], None] | None) -> supervise.Outcome:
            return supervise.launch(
                lambda fd, fds: bwrap.command(run_spec, found.executable, status_fd=fd, fds=fds),
                dict(spec.env),
                preexec=preexec,
                wall_seconds=spec.limits.wall_seconds,
                after_start=after_start,
                run_as=spec.run_as,
            )

        keyrings.join_new_session()  # the caller's session keyring stays outside
        # Missing names bubblewrap must mount over exist for the run (Seatbelt needs none).
        with placeholders.held(spec.pins, paths.data_dir) as absent:
            run_spec = spec
            if absent:
                kept = tuple(p for p in spec.read_only if p not in absent)
                run_spec = spec._replace(read_only=kept)
            if memory is None:
                return launch(preexec)
            return limits.in_memory_cgroup(memory, run_id, spec.limits.memory_mb, preexec, launch)
    from krate.sandbox import seatbelt

    with supervise.run_folder(paths.data_dir / RUN_DIRS, run_id) as folder:
        tmp = folder / "tmp"
        tmp.mkdir(mode=0o700)
        spec = seatbelt.with_tmpdir(spec, tmp)
        return supervise.launch(
            lambda _fd, _fds: seatbelt.command(spec, found.executable),
            dict(spec.env),
            preexec=preexec,
            wall_seconds=spec.limits.wall_seconds,
            status_stream=False,
            after_start=after_start,
        )


def _with_argv(spec: SandboxSpec, argv: list[str]) -> SandboxSpec:
    return spec._replace(argv=tuple(argv))


# ---------------------------------------------------------------- records


def _record_start(
    store: Any, run_id: str, policy: Any, request: RunRequest, backend: str, prepared: _Prepared
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
        "krate_start": supervise.process_identity(pid),
    }
    data, row = printable(data), printable(row)
    with store.write() as writer:
        event = writer.append("run.started", data, run_id)
        runs_store.insert_started(writer, run_id, event, row)
        for decision in prepared.decisions:
            writer.append("policy.decision", printable(decision), run_id)


def _record_finish(
    store: Any,
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


def mark_interrupted(store: Any) -> list[str]:
    """Record `run.interrupted` for runs whose krate process is gone; return their ids."""
    from krate.store import runs as runs_store

    if not runs_store.running(store):
        return []
    marked = []
    with store.write() as writer:
        for row in runs_store.running(store):
            if supervise.alive(row.krate_pid, row.krate_start):
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


def _effective(row: Any) -> Any:
    if row.status == "running" and not supervise.alive(row.krate_pid, row.krate_start):
        return row._replace(status="interrupted", reason="krate was killed before the run finished")
    return row


def list_runs(paths: Paths, limit: int | None = None) -> list[Any]:
    """Newest first; runs whose krate is gone show as interrupted."""
    from krate.store import open_store
    from krate.store import runs as runs_store

    with open_store(paths, readonly=True) as store:
        return [_effective(r) for r in runs_store.list_runs(store, limit)]


def show_run(paths: Paths, ref: str) -> tuple[Any, list[dict[str, Any]], list[Any]]:
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
