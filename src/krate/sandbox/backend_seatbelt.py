"""The Seatbelt backend (macOS): seatbelt.py's profile run by `sandbox-exec`.

`sandbox-exec` applies the profile and executes the command in the same process,
so that process is the workload: its exit status is the workload's (128+N for a
signal) and signals go to its process group. It cannot be held: it starts on
release, after the run is recorded. The workload reaches the egress proxy on a
loopback TCP port, and starts in the spec's working folder (`--workdir`).

Telling sandbox-exec's own failures from the workload's. sandbox-exec exits 65
when it rejects a profile and 71 when the kernel refuses it (`sandbox_apply:
Operation not permitted`, e.g. `forbidden-sandbox-reinit` inside another sandbox),
and a workload may exit 65 or 71 itself. Its stderr message cannot be read without
taking the workload's stderr (and its terminal) away, so sandbox-exec does not run
the workload directly: it runs `LAUNCHER`, a few lines of standard-library Python
(`python -I -S`, krate's own interpreter), inside the profile. The launcher sets
the run's rlimits, writes "1" on a pipe krate passes it, closes that pipe and
executes the workload (same process, same argv and environment: it undoes the
LC_CTYPE that Python's start-up sets for a C locale). After the exit
krate reads the pipe: "1" means the workload ran and its status is krate's; nothing
means sandbox-exec (or the interpreter) failed first: 125, with a one-line reason;
"E..." is a limit the system refused: 125 naming that limit. The cost is the
interpreter's start-up (about 10-20 ms) on every macOS run. A shell launcher would
be cheaper, but a POSIX shell cannot reliably close a descriptor numbered above 9
(dash cannot) and bash adds SHLVL, PWD and `_` to the workload's environment.

Limits: CPU and memory (RLIMIT_DATA, per process only; docs/run.md) are set by the
launcher inside the sandbox, so a refusal (macOS answers EINVAL for some
RLIMIT_DATA values) is a one-line 125 before the workload starts, never a run
without the limit. limits.processes is refused (125): macOS counts RLIMIT_NPROC
per user over all of the user's processes, and there is no user namespace or
`prlimit` to count only the sandbox's.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.sandbox import leftovers, limits, seatbelt
from krate.sandbox.backend import LOOPBACK, Capabilities, Installed
from krate.sandbox.supervise import Launcher

if TYPE_CHECKING:
    from krate.sandbox.cgroup import Place
    from krate.sandbox.spec import SandboxSpec
    from krate.sandbox.supervise import Outcome

CAPABILITIES = Capabilities(
    memory="rlimit", kernel=False, run_as_owner=False, network=LOOPBACK, relay_threads=False
)

# argv: -c FD LIMITS CTYPE COMMAND...; LIMITS is "which:soft:hard,..." (may be empty);
# CTYPE is "=" + the workload's LC_CTYPE, or "" when it has none: Python's start-up may
# coerce a C locale by setting LC_CTYPE (PEP 538), which the workload must not inherit.
LAUNCHER = """\
import os, sys
fd = int(sys.argv[1])
if sys.argv[3]:
    os.environ["LC_CTYPE"] = sys.argv[3][1:]
else:
    os.environ.pop("LC_CTYPE", None)
for item in filter(None, sys.argv[2].split(",")):
    which, soft, hard = (int(x) for x in item.split(":"))
    try:
        import resource
        old_soft, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            hard = min(hard, old_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    except (OSError, ValueError) as exc:
        os.write(fd, ("E%d:%s" % (which, exc)).encode(errors="replace"))
        sys.exit(125)
os.write(fd, b"1")
os.close(fd)
argv = sys.argv[4:]
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("krate: cannot execute %s: %s\\n" % (argv[0], exc.strerror))
    sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""
LIMIT_NAMES = {
    resource.RLIMIT_CPU: "limits.cpu_seconds (RLIMIT_CPU)",
    resource.RLIMIT_DATA: "limits.memory_mb (RLIMIT_DATA)",
}


class Seatbelt(Installed):
    name = "seatbelt"
    CAPABILITIES = CAPABILITIES

    def visible(self, path: Path, spec: SandboxSpec) -> bool:
        return seatbelt.visible_inside(path, spec)

    @contextlib.contextmanager
    def open(
        self, spec: SandboxSpec, *, run_id: str, data_dir: Path, memory: Place | None = None
    ) -> Iterator[SeatbeltLauncher]:
        """The launcher, with the run's private TMPDIR (removed afterwards).

        Everything that can refuse the run (limits.processes, a profile Seatbelt
        cannot hold, an interpreter the policy hides) does so here: 125 before
        anything starts.
        """
        if spec.limits.processes is not None:
            raise KrateError(
                "the policy sets limits.processes, which the Seatbelt sandbox cannot enforce "
                "(macOS counts processes per user, not per sandbox); remove the limit to run here",
                exit_code=EXIT_KRATE_FAILED,
            )
        python = os.path.realpath(sys.executable)
        if not seatbelt.visible_inside(Path(python), spec):
            raise KrateError(
                f"the policy hides krate's Python ({python}), which starts the workload inside "
                "the Seatbelt sandbox; unhide its folder",
                exit_code=EXIT_KRATE_FAILED,
            )
        with leftovers.run_folder(data_dir / leftovers.RUN_DIRS, run_id) as folder:
            tmp = folder / "tmp"
            tmp.mkdir(mode=0o700)
            spec = seatbelt.with_tmpdir(spec, tmp)
            with SeatbeltLauncher(spec, self.executable, python) as launcher:
                yield launcher


class SeatbeltLauncher(Launcher):
    """`sandbox-exec`'s process is the workload's; LAUNCHER's pipe says whether it ran.

    With a terminal on stdin it stays in krate's process group, the terminal's
    foreground job, so a REPL or an editor reading the terminal is not stopped as a
    background job (SIGTTIN), and Ctrl-Z stops krate and the workload together
    (supervise.py). Nothing to ignore (`CHILD_IGNORES`): LAUNCHER executes the
    workload in the same process.
    """

    def __init__(self, spec: SandboxSpec, exe: str, python: str) -> None:
        super().__init__(dict(spec.env), wall_seconds=spec.limits.wall_seconds)
        self.spec, self.exe, self.python = spec, exe, python
        self.cwd = str(spec.cwd)  # --workdir: sandbox-exec keeps the folder it starts in
        self.pairs = limits.rlimit_pairs(spec.limits)
        self.status: int | None = None  # krate's end of the launcher's pipe
        self.said: bytes | None = None
        try:
            self.profile = seatbelt.profile(spec, user_cache=seatbelt.user_cache_dir())
        except ValueError as exc:  # a path longer than Seatbelt's string literals
            raise KrateError(
                f"cannot build the Seatbelt profile: {exc}; shorten that path or leave it "
                "out of the policy",
                exit_code=EXIT_KRATE_FAILED,
            ) from exc

    def command(self, fds: list[int]) -> list[str]:
        read, write = os.pipe()
        self.status = read
        fds.append(write)
        pairs = ",".join(f"{which}:{soft}:{hard}" for which, soft, hard in self.pairs)
        ctype = self.env.get("LC_CTYPE")
        ctype_arg = "" if ctype is None else "=" + ctype
        launcher = [self.python, "-I", "-S", "-c", LAUNCHER, str(write), pairs, ctype_arg]
        return [self.exe, "-p", self.profile, "--", *launcher, *self.spec.argv]

    def _read_status(self) -> bytes:
        if self.said is None:
            self.said = b""
            if self.status is not None:
                os.set_blocking(self.status, False)
                with contextlib.suppress(OSError):
                    self.said = os.read(self.status, 4096)
        return self.said

    def exit_code(self, returncode: int) -> int | None:
        if not self._read_status().startswith(b"1"):
            return None
        return super().exit_code(returncode)

    def not_started(self, outcome: Outcome, returncode: int) -> None:
        super().not_started(outcome, returncode)
        said = self._read_status().decode(errors="replace")
        which, _, error = said[1:].partition(":")
        if said.startswith("E") and which.isdigit():
            name = LIMIT_NAMES.get(int(which), f"resource limit {which}")
            outcome.reason = (
                f"the system refused {name} for the sandbox: {error.strip()}; "
                "remove or change the limit"
            )
        else:
            outcome.reason = (
                f"sandbox-exec failed before the workload started (exit {returncode}; its "
                "message is above): it rejected the profile, or krate runs inside another "
                "sandbox, where macOS refuses a second one"
            )

    def close(self) -> None:
        if self.status is not None:
            with contextlib.suppress(OSError):
                os.close(self.status)
            self.status = None
