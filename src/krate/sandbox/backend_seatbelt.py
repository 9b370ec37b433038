"""The Seatbelt backend (macOS): seatbelt.py's profile run by `sandbox-exec`.

`sandbox-exec` applies the profile and executes the command in the same process,
so that process is the workload: its exit status is the workload's (128+N for a
signal), signals go to its process group, and the only start failure krate can
tell apart is `sandbox-exec` itself not starting (125). It cannot be held: it
starts on release, after the run is recorded. The workload reaches the egress
proxy on a loopback TCP port. Memory is RLIMIT_DATA per process only (no cgroup):
docs/run.md says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from krate.sandbox import limits, seatbelt, supervise
from krate.sandbox.backend import LOOPBACK, Capabilities, Installed
from krate.sandbox.supervise import Launcher

if TYPE_CHECKING:
    from krate.sandbox.cgroup import Place
    from krate.sandbox.spec import SandboxSpec

CAPABILITIES = Capabilities(
    memory="rlimit", kernel=False, run_as_owner=False, network=LOOPBACK, relay_threads=False
)


class Seatbelt(Installed):
    name = "seatbelt"
    CAPABILITIES = CAPABILITIES

    def visible(self, path: Path, spec: SandboxSpec) -> bool:
        return seatbelt.visible_inside(path, spec)

    @contextlib.contextmanager
    def open(
        self, spec: SandboxSpec, *, run_id: str, data_dir: Path, memory: Place | None = None
    ) -> Iterator[SeatbeltLauncher]:
        """The launcher, with the run's private TMPDIR (removed afterwards)."""
        spec = spec._replace(argv=tuple(limits.wrap_argv(spec.limits, list(spec.argv))))
        preexec = limits.preexec(spec.limits)
        with supervise.run_folder(data_dir / supervise.RUN_DIRS, run_id) as folder:
            tmp = folder / "tmp"
            tmp.mkdir(mode=0o700)
            spec = seatbelt.with_tmpdir(spec, tmp)
            with SeatbeltLauncher(spec, self.executable, preexec) as launcher:
                yield launcher


class SeatbeltLauncher(Launcher):
    """`sandbox-exec`'s process is the workload's: Launcher's defaults fit it.

    With a terminal on stdin it stays in krate's process group, the terminal's
    foreground job, so a REPL or an editor reading the terminal is not stopped as a
    background job (SIGTTIN), and Ctrl-Z stops krate and the workload together
    (supervise.py). Nothing to ignore (`CHILD_IGNORES`): there is no process between.
    """

    def __init__(self, spec: SandboxSpec, exe: str, preexec: Callable[[], None] | None) -> None:
        super().__init__(dict(spec.env), preexec=preexec, wall_seconds=spec.limits.wall_seconds)
        self.spec, self.exe = spec, exe

    def command(self, fds: list[int]) -> list[str]:
        return seatbelt.command(self.spec, self.exe)
