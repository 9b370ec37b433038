"""The shell hold: a run without network starts its sandbox before `run.started` is committed.

Behind the egress bridge the sandbox already starts held (egress/gate.py). Without
network there is no bridge, and bubblewrap's own `--block-fd` cannot hold: it proceeds
at end of file, which is also what a SIGKILLed krate's closed pipe looks like. So the
sandbox's first process is `/bin/sh -c SCRIPT sh WORKLOAD...`, which reads one line from
a pipe only krate writes to and executes the workload only when that line is exactly
`go`: end of file (krate killed, or `release(go=False)`), any other bytes, or a line
cut short exit without it. The shell's `exec` keeps its pid, process group, session,
terminal and signal dispositions, so the workload is bubblewrap's command as before;
the workload's argv reaches it as the shell's positional parameters ("$@"), never
parsed as shell text. bubblewrap sets the sandbox up meanwhile: the record (the
store's import, opening and commit, 5-6 ms at a load of 1) overlaps its namespaces and
mounts instead of preceding them (docs/startup.md, seventh round).

Why a shell, and only where it changes nothing (`usable()`), else the sandbox starts on
release as before: a Python hold (the bridge's) costs an interpreter's start (~10 ms)
on the critical path; dash (Debian's /bin/sh) starts in well under a millisecond
while krate writes its record. dash is required by name: it adds nothing to the
environment (bash adds SHLVL and `_`) and keeps PWD, which bubblewrap sets to
`--chdir`'s path either way. dash drops variables whose names are not shell names,
resets IFS and OPTIND and overwrites PPID: a workload environment holding any of these
keeps the old path, and so does a command name starting with `-` (a shell's `exec` may
take it for an option). A shell cannot close a descriptor above 9 (dash cannot name
one): the pipe must get one of 3-9.

No acknowledgement pipe: krate knows whether it wrote `go`. Not written (the run
could not be recorded, the shell was killed): the workload never ran, 125 with the
reason; a signal krate got first waits in krate (`passes_signals`) and ends the run
128+N, interrupted, as before a sandbox exists. Written: the status is the workload's. The
126/127 checks are made before the sandbox starts, as without the hold (runs.py);
only a command removed in between fails inside, as the shell's 126/127.
"""

from __future__ import annotations

import contextlib
import os
import re

from krate.errors import EXIT_KRATE_FAILED, how_it_ended

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

SHELL = "/bin/sh"
GO = b"go\n"
# {fd}: the go pipe's reading end (3-9). `read` fails at end of file, even after a partial
# line; `IFS=` (for `read` only) keeps it from trimming blanks around the line.
SCRIPT = 'IFS= read -r go <&{fd} && [ "$go" = go ] && exec "$@" {fd}<&-'
# What dash changes in the environment it passes on: names it drops, values it resets.
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESET = ("IFS", "OPTIND", "PPID")


def usable(
    env: Mapping[str, str],
    argv: Sequence[str],
    visible: Callable[[str], bool],
    shell: str = SHELL,
) -> bool:
    """Whether the hold leaves the workload exactly as it would start without it."""
    if not argv or argv[0].startswith("-"):
        return False
    if any(name in RESET or not SHELL_NAME.match(name) for name in env):
        return False
    real = os.path.realpath(shell)
    return os.path.basename(real) == "dash" and os.access(real, os.X_OK) and visible(real)


class ShellHold:
    """The go pipe (krate writes, the shell reads) and the shell's argv before the workload's.

    The `Gate` of sandbox/backend.py for the bubblewrap launcher without network.
    """

    before_go = None  # nothing to set up from outside (the bridge's DNS has that)
    passes_signals = False  # a signal before `go` cannot wait in the shell: the launcher's

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.go_read: int | None = read_fd  # krate's copy, until the launcher takes it (`fds`)
        self.fd = read_fd  # its number, the same in the sandbox (bubblewrap passes it on)
        self.go_write: int | None = write_fd
        self.went = False

    @classmethod
    def make(cls) -> ShellHold | None:
        """A hold whose pipe got a descriptor a shell can name (3-9), else None."""
        read_fd, write_fd = os.pipe()
        if read_fd > 9:
            os.close(read_fd)
            os.close(write_fd)
            return None
        return cls(read_fd, write_fd)

    @property
    def holding(self) -> bool:
        return self.go_write is not None

    def take_fds(self) -> tuple[int, ...]:
        """The reading end, for the sandbox: the launcher passes it on and closes krate's copy."""
        fd, self.go_read = self.go_read, None
        return () if fd is None else (fd,)

    def argv(self) -> list[str]:
        """The sandbox's command before the workload's argv (which follows as "$@")."""
        return [SHELL, "-c", SCRIPT.format(fd=self.fd), "sh"]

    def release(self, go: bool = True) -> None:
        """Let the workload start (`go`), or make the shell exit without it."""
        if self.go_write is None:
            return
        try:
            if go:
                os.write(self.go_write, GO)
                self.went = True
        except OSError:  # BrokenPipeError: the shell is gone, the workload never ran
            pass
        finally:
            os.close(self.go_write)
            self.go_write = None

    def unstarted(self, status: int) -> tuple[int, str] | None:
        """None once `go` was written (the status is the workload's), else why it never ran."""
        if self.went:
            return None
        how = how_it_ended(status)
        return EXIT_KRATE_FAILED, f"the sandbox's hold {how} before the workload started"

    def close(self) -> None:
        """A shell still waiting exits without the workload; a pipe end never passed on goes."""
        self.release(go=False)
        for fd in self.take_fds():
            with contextlib.suppress(OSError):
                os.close(fd)
