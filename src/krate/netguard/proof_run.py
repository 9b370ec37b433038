"""The proof's runs: one krate command in an isolated KRATE_HOME, observed from outside.

Each command runs as a child process (under strace and in an empty network
namespace where they exist, or a deny-network Seatbelt profile on macOS); what
it recorded in its own store and what the observers saw become one JSON row.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate.netguard import guard, observer, startup

if TYPE_CHECKING:
    from krate.netguard.proof import Invocation


def child_env(environ: Mapping[str, str], home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in ("_KRATE_COMPLETE", "KRATE_DEBUG")}
    env.update({"KRATE_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100"})
    env.update(extra)
    return env


def run_one(
    item: Invocation,
    krate: list[str],
    environ: Mapping[str, str],
    home: Path,
    cwd: Path,
    strace: str | None,
    bwrap: str | None,
    seatbelt: str | None = None,
    package_dir: Path | None = None,
) -> dict[str, Any]:
    log = str(cwd / "strace.log")
    argv = [*krate, *item.argv]
    strings = 512 if item.mode == "real" else 0  # argv names the helpers; no workload data
    cmd = observer.wrap(
        argv, strace=strace, bwrap=bwrap, log=log, trace=startup.TRACE, strings=strings
    )
    if seatbelt:
        cmd = observer.seatbelt_wrap(cmd, seatbelt)
    before = violation_count(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            cmd,
            env=child_env(environ, home, item.env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = None, "timed out after 120 s"
    recorded = violation_count(home) - before
    guard_hits = max(recorded, err.count("krate: refused network access"))
    observed = started = None
    if strace:
        try:
            text = Path(log).read_text(encoding="utf-8", errors="replace")
        finally:
            Path(log).unlink(missing_ok=True)
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
    if code not in (0, None) and item.mode != "help":
        result["stderr_tail"] = err.strip().splitlines()[-1:] if err.strip() else []
    return result


def violation_count(home: Path) -> int:
    """guard.violation events in the isolated store (each child records its own)."""
    from krate.errors import KrateError
    from krate.paths import Paths
    from krate.store import events, open_store

    if not (home / "krate.db").exists():
        return 0
    try:
        with open_store(Paths(home, home), readonly=True) as store:
            return len(events.query(store, kind_prefix=guard.EVENT_KIND))
    except KrateError:
        return 0
