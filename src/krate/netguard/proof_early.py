"""The proof's real runs of `krate run` and `krate build`, started before its own lockdown.

`krate audit network --prove` locks itself out of IP sockets like every command,
and a lockdown is inherited by every process started after it. A real run needs
what its own sandbox needs (the egress bridge listens on 127.0.0.1 inside the
sandbox's network namespace), so a run started from the locked prove process
never starts its workload. cli/main.py therefore calls `start()` before the
lockdown, as run and build start their sandbox first: only krate and the
standard library can load until then (`lockdown.hold_imports()`), and the
prove process only starts strace (or the command itself) and returns. `take()`
hands the runs to the proof, which reads them after the lockdown.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from krate.handoff import Handoff
from krate.netguard import lockdown, proof_run
from krate.netguard.proof_run import Invocation, Running
from krate.records import NamedTuple

# Real runs of the commands that start a sandbox and the egress proxy before their
# lockdown (default policy: the proxy starts), in a fresh store. Each workload
# leaves a file the proof looks for: a run whose workload never ran is not counted.
REAL_INVOCATIONS: dict[tuple[str, ...], list[str]] = {
    ("run",): ["run", "--", "touch", "ran"],
    ("build",): ["build", "--out", "out", "--", "touch", "out"],
}
MARKERS = {("run",): "ran", ("build",): "out"}


class Early(NamedTuple):
    """The proof's temporary folder and the real runs started in it, by command."""

    tmp: Path
    runs: dict[str, Running]
    error: str | None = None


_early: Handoff[Early] = Handoff()


def krate_command() -> list[str]:
    """The installed `krate` next to this interpreter, or `python -m krate`."""
    script = shutil.which("krate", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "krate"]


def real_invocations() -> dict[tuple[str, ...], Invocation]:
    """The real runs, as the proof plans them."""
    items = {}
    for path, template in REAL_INVOCATIONS.items():
        argv = list(template)
        if os.geteuid() == 0:  # the proof's own root-owned folder: a root run on purpose
            argv.insert(1, "--as-root")
        items[path] = Invocation(
            " ".join(path),
            argv,
            "real",
            fresh=True,
            note=f"a real workload: {lockdown.DEFERRED_COMMANDS[path[0]]}",
            marker=MARKERS[path],
        )
    return items


def start(environ: Mapping[str, str]) -> None:
    """Make the proof's folder and start its real runs; never raises (the proof says why)."""
    tmp = Path(tempfile.mkdtemp(prefix="krate-prove-"))
    runs: dict[str, Running] = {}
    try:
        seen = proof_run.Observers.find()
        for index, item in enumerate(real_invocations().values()):
            work = tmp / f"real{index}"
            work.mkdir(mode=0o700)
            runs[item.command] = proof_run.start(
                item, krate_command(), environ, work / "home", work, seen
            )
        _early.put(Early(tmp, runs))
    except Exception as exc:
        for running in runs.values():
            proof_run.stop(running)
        _early.put(Early(tmp, {}, f"{type(exc).__name__}: {exc}"))


def take() -> Early | None:
    """The runs started before the lockdown (once), or None (not started: the test entry)."""
    return _early.take()


def abandon() -> None:
    """End real runs no proof took (a usage error after the start) and remove their folder."""
    early = take()
    if early is not None:
        for running in early.runs.values():
            proof_run.stop(running)
        shutil.rmtree(early.tmp, ignore_errors=True)
