"""The proof's runs: one krate command in an isolated KRATE_HOME, observed from outside.

Each command runs as a child process (under strace and in an empty network
namespace where they exist, or a deny-network Seatbelt profile on macOS); what
it recorded in its own store and what the observers saw become one JSON row.
`start` and `finish` are apart so the real runs of run and build can be started
before the prove command's own lockdown (proof_early.py) and read after it; this
half loads only krate and the standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from krate.netguard import guard, observer, startup
from krate.records import NamedTuple

TIMEOUT_S = 120


@dataclass
class Invocation:
    command: str
    argv: list[str]
    mode: str  # "safe", "help", "real", "fast path", "completion"
    env: dict[str, str] = field(default_factory=dict)
    expect_lockdown: bool = True
    note: str | None = None
    writes_base: bool = False  # runs first, in the store every later command starts from
    fresh: bool = False  # starts from an empty store (migrations pending)
    marker: str | None = None  # real runs: the file their workload leaves in its folder


class Running(NamedTuple):
    """A started command: what `finish` needs to wait for it and read what it left."""

    item: Invocation
    process: subprocess.Popen
    home: Path
    cwd: Path
    log: Path
    stderr: IO[bytes]
    before: int
    deadline: float


def child_env(environ: Mapping[str, str], home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in ("_KRATE_COMPLETE", "KRATE_DEBUG")}
    env.update({"KRATE_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100"})
    env.update(extra)
    return env


class Observers(NamedTuple):
    """What watches the commands from outside, where this platform has it."""

    strace: str | None
    bwrap: str | None
    seatbelt: str | None  # macOS: a deny-network Seatbelt profile (it shows no attempts)

    @classmethod
    def find(cls) -> Observers:
        linux = sys.platform.startswith("linux")
        return cls(
            observer.find_strace() if linux else None,
            observer.find_bwrap() if linux else None,
            _sandbox_exec() if sys.platform == "darwin" else None,
        )


def _sandbox_exec() -> str | None:
    """/usr/bin/sandbox-exec, never one found on PATH."""
    from krate.sandbox.seatbelt import SANDBOX_EXEC

    return SANDBOX_EXEC if os.access(SANDBOX_EXEC, os.X_OK) else None


def run_one(
    item: Invocation, krate: list[str], environ: Mapping[str, str], home: Path, cwd: Path,
    seen: Observers, package_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    return finish(start(item, krate, environ, home, cwd, seen), seen.strace, package_dir)


def start(
    item: Invocation, krate: list[str], environ: Mapping[str, str], home: Path, cwd: Path,
    seen: Observers,
) -> Running:  # fmt: skip
    """Start one command under the observers; its output goes to files, not pipes left unread."""
    log = cwd / "strace.log"
    argv = [*krate, *item.argv]
    strings = 512 if item.mode == "real" else 0  # argv names the helpers; no workload data
    cmd = observer.wrap(
        argv, strace=seen.strace, bwrap=seen.bwrap, log=str(log), trace=startup.TRACE,
        strings=strings,
    )  # fmt: skip
    if seen.seatbelt:
        cmd = observer.seatbelt_wrap(cmd, seen.seatbelt)
    before = violation_count(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (finish() reads and closes it)
    try:
        process = subprocess.Popen(
            cmd,
            env=child_env(environ, home, item.env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    except BaseException:
        stderr.close()
        raise
    deadline = time.monotonic() + TIMEOUT_S
    return Running(item, process, home, cwd, log, stderr, before, deadline)


def stop(running: Running) -> None:
    """End a started command nobody will read (the prove command stopped early)."""
    if running.process.poll() is None:
        running.process.kill()
    running.process.wait()
    running.stderr.close()


def finish(running: Running, strace: str | None, package_dir: Path | None = None) -> dict[str, Any]:
    """Wait for a started command and turn what it left into the proof's row."""
    item, home = running.item, running.home
    try:
        code = running.process.wait(timeout=max(0.0, running.deadline - time.monotonic()))
        running.stderr.seek(0)
        err = running.stderr.read().decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        code, err = None, f"timed out after {TIMEOUT_S} s"
        stop(running)
    finally:
        running.stderr.close()
    recorded = violation_count(home) - running.before
    guard_hits = max(recorded, err.count("krate: refused network access"))
    observed = started = None
    if strace:
        try:
            text = running.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        finally:
            running.log.unlink(missing_ok=True)
        package = str((package_dir or Path(__file__).parent.parent).resolve())
        started = startup.analyse(text, package)
        observed = observer.classify(text, ignore=set(started.pop("sandbox_pids", ())))
    result = {
        "command": item.command,
        "argv": ["krate", *item.argv],
        "mode": item.mode,
        "exit_code": code,
        "outbound_attempts": guard_hits + (len(observed.attempts) if observed else 0),
        "guard_violations": guard_hits,
        "observed": observed.to_dict() if observed else None,
        "observed_processes": observed.processes if observed else None,
        "lockdown_applied": (observed.lockdown_calls > 0) if observed else None,
        "expect_lockdown": item.expect_lockdown,
        "startup": started,
    }
    if item.note:
        result["note"] = item.note
    if item.marker:
        result["workload"] = workload_evidence(item, home, running.cwd)
    if code not in (0, None) and item.mode != "help":
        result["stderr_tail"] = err.strip().splitlines()[-1:] if err.strip() else []
    return result


def workload_evidence(item: Invocation, home: Path, cwd: Path) -> dict[str, Any]:
    """Did a real run's workload run? Its marker file, and what the fresh store recorded.

    A krate whose sandbox failed before the workload started may still exit 0; the
    file the workload itself writes cannot appear without it. The store must agree:
    the run finished with exit 0 (and the build recorded the marker as its artifact).
    """
    marker = bool(item.marker) and (cwd / str(item.marker)).is_file()
    recorded = recorded_workload(home, item.argv[0], str(item.marker))
    ran = marker and recorded.get("status") == "finished" and recorded.get("exit_code") == 0
    if item.argv[0] == "build":
        ran = ran and recorded.get("build_exit_status") == 0 and recorded.get("artifact", False)
    evidence: dict[str, Any] = {"ran": ran, "marker": item.marker, "marker_found": marker}
    evidence["recorded"] = recorded
    if not ran:
        evidence["why"] = (
            f"its workload left no {item.marker!r}" if not marker else "its store disagrees"
        ) + (f" (recorded: {recorded.get('reason')})" if recorded.get("reason") else "")
    return evidence


def recorded_workload(home: Path, command: str, artifact: str) -> dict[str, Any]:
    """The newest run (and build) in a proof run's fresh store, or why there is none."""
    if not (home / "krate.db").exists():
        return {"status": None, "reason": "no store was written"}
    from krate.errors import KrateError
    from krate.paths import Paths
    from krate.store import artifacts, open_store
    from krate.store import runs as runs_store

    try:
        with open_store(Paths(home, home), readonly=True) as store:
            run = next(iter(runs_store.list_runs(store, 1)), None)
            if run is None:
                return {"status": None, "reason": "no run was recorded"}
            found: dict[str, Any] = {
                "status": run.status,
                "exit_code": run.exit_code,
                "reason": run.reason,
            }
            if command == "build":
                build = artifacts.last_build(store)
                found["build_exit_status"] = build.exit_status if build else None
                found["artifact"] = bool(build) and any(
                    a.name == artifact for a in artifacts.artifacts_of_build(store, build.id)
                )
            return found
    except KrateError as exc:
        return {"status": None, "reason": str(exc)}


def violation_count(home: Path) -> int:
    """guard.violation events in the isolated store (each child records its own)."""
    if not (home / "krate.db").exists():
        return 0  # checked first: a real run is started before the lockdown, store code unloaded
    from krate.errors import KrateError
    from krate.paths import Paths
    from krate.store import events, open_store

    try:
        with open_store(Paths(home, home), readonly=True) as store:
            return len(events.query(store, kind_prefix=guard.EVENT_KIND))
    except KrateError:
        return 0
