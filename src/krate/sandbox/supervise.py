"""Starting the sandbox and staying out of the way: signals, exit status, wall clock, leftovers.

The workload inherits stdin, stdout and stderr directly (nothing is pumped
through Python, so pipes, TTYs and gigabytes pass at full speed). The workload's
status becomes krate's (128+N for a signal).

Two ways to run, chosen by whether stdin is a terminal (`interactive()`):

- Not a terminal: the sandbox runs in its own process group and (bubblewrap) its
  own session, so a terminal's Ctrl-C reaches krate only, which forwards SIGINT,
  SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the sandbox once.
- A terminal: the sandbox stays in krate's own process group, the job the user's
  shell made the terminal's foreground group. The kernel delivers Ctrl-C, Ctrl-\\,
  Ctrl-Z and SIGWINCH to the workload itself, as to any program; Ctrl-Z stops krate
  and the sandbox together and `fg` resumes both. krate forwards only what the
  terminal does not send (SIGTERM, SIGUSR1, SIGUSR2) to the workload. SIGHUP (the
  terminal closed) and SIGQUIT end the run as `interrupted`.

Either way Ctrl-C never counts toward killing the sandbox, except as the
emergency exit for a workload that ignores every signal: three SIGINTs within
EMERGENCY_S seconds while it runs kill it (one line is printed the first time the
exit is armed, after the second).

`Launcher` is one sandbox process through the launch sequence (start held,
release, wait); each backend subclasses it (backend_bwrap.py, backend_seatbelt.py)
to say how its command is built and how it reports whether the workload ran.

Never reads os.environ: the caller passes the environment for the workload.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from krate.errors import EXIT_CANNOT_EXECUTE, EXIT_KRATE_FAILED, EXIT_NOT_FOUND, KrateError

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.sandbox.backend import Gate
    from krate.sandbox.identity import Identity

FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
FORCE_AFTER_SIGINTS = 3  # within EMERGENCY_S seconds: the emergency exit
EMERGENCY_S = 2.0
# Sent by the terminal to its foreground group: in terminal mode the workload has them already.
FROM_TERMINAL = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGQUIT", "SIGWINCH") if hasattr(signal, name)
)
ARMED = "krate: Ctrl-C twice in a row; a third within 2 s kills the sandbox\n"


class Outcome:
    """How the run ended, for the record and for krate's own exit status."""

    __slots__ = ("exit_code", "status", "reason", "started", "duration_s", "forwarded")

    def __init__(
        self,
        exit_code: int,
        status: str,  # finished | timeout | failed | interrupted
        reason: str | None = None,
        started: bool = True,
        duration_s: float = 0.0,
        forwarded: list[int] | None = None,
    ) -> None:
        self.exit_code, self.status, self.reason = exit_code, status, reason
        self.started, self.duration_s = started, duration_s
        self.forwarded = [] if forwarded is None else forwarded

    def __repr__(self) -> str:
        return f"Outcome({self.exit_code}, {self.status!r}, {self.reason!r})"


# ---------------------------------------------------------------- the command


def find_command(
    name: str, path_env: str | None, cwd: Path, visible: Callable[[Path], bool]
) -> str:
    """Check, as the sandbox will see it, that `name` exists and can be executed.

    Raises KrateError 127 (not found, or hidden by the policy) or 126 (not executable).
    """
    if not name:
        raise KrateError("no command given", exit_code=EXIT_NOT_FOUND)
    if "/" in name:
        candidates = [cwd / name]
    else:
        folders = [d or "." for d in (path_env or os.defpath).split(os.pathsep)]
        candidates = [cwd / d / name for d in folders]
    not_executable = None
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        try:
            if not real.exists() or not visible(real):
                continue
            runnable = real.is_file() and os.access(real, os.X_OK)
        except OSError:  # a PATH folder krate may not search: the shell skips it too
            continue
        if runnable:
            return str(candidate)
        not_executable = not_executable or candidate
    if not_executable is not None:
        raise KrateError(
            f"cannot execute {not_executable}: not an executable file{_chmod(not_executable)}",
            exit_code=EXIT_CANNOT_EXECUTE,
        )
    where = "" if "/" in name else " in the sandbox's PATH"
    raise KrateError(f"command not found{where}: {name}", exit_code=EXIT_NOT_FOUND)


def _chmod(path: Path) -> str:
    """The fix for a regular file without any execute bit; nothing for a folder or noexec."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:
        return ""
    from krate.path_hints import quote

    return f"; make it one with `chmod +x {quote(str(path))}`"


# ---------------------------------------------------------------- the terminal


def interactive(fd: int = 0) -> bool:
    """Whether the run keeps the terminal: stdin is one (module docstring)."""
    return os.isatty(fd)


@contextlib.contextmanager
def terminal_kept(fd: int = 0):
    """Give the terminal on `fd` its modes (termios) back after the run, whatever happened.

    A workload that switched it to raw mode or turned echo off and then exited or was
    killed would otherwise leave the user's shell unusable.
    """
    saved = None
    if os.isatty(fd):
        import termios

        with contextlib.suppress(termios.error):
            saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        if saved is not None:
            import termios

            # A background krate (job control) may still set them: ignore SIGTTOU meanwhile.
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(fd, termios.TCSANOW, saved)
            finally:
                signal.signal(signal.SIGTTOU, previous)


# ---------------------------------------------------------------- launching


def _then_become(preexec: Callable[[], None] | None, who: Identity) -> Callable[[], None]:
    """`preexec`, then drop to `who` for good (groups, then gid, then uid: all three ids)."""

    def child() -> None:
        if preexec is not None:
            preexec()
        os.setgroups(list(who.groups))
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)

    return child


def _detach_terminal(fds: list[int]) -> None:
    """Point `fds` (the terminal) at /dev/null: after a hang-up, writing there fails, and
    Python would exit 120 instead of krate's status."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            os.dup2(null, fd)
    finally:
        os.close(null)


def _ignoring(signals: tuple[int, ...], preexec: Callable[[], None] | None) -> Callable[[], None]:
    """`preexec` in a child that ignores `signals` (kept across exec; the workload resets them)."""

    def child() -> None:
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)
        if preexec is not None:
            preexec()

    return child


class Launcher:
    """One sandbox process: started held, released, waited for; signals, wall clock, outcome.

    Used as a context manager: leaving it by an exception (the run could not be
    recorded, Ctrl-C) kills a started sandbox, and the signal handlers are given back
    whatever happened. A backend subclass says how to build its command (`command`),
    which process is the sandbox's init, how to kill the whole tree and what the
    workload's own exit status was; the defaults are for a backend whose process is
    the workload itself (Seatbelt: `sandbox-exec` executes the command).

    `run_as` (an identity.Identity, for a root krate): the child takes that user's
    groups, gid and uid before it executes the sandbox, after `preexec` (which may
    still need root, e.g. to join the run's memory cgroup).

    `terminal`: keep the terminal (module docstring); `interactive()` by default.
    The sandbox's own process then ignores `CHILD_IGNORES` (the signals the terminal
    sends to the whole group that would kill it but not the workload inside).
    """

    cwd: str | None = None  # the folder the sandbox process starts in (None: krate's)
    CHILD_IGNORES: tuple[int, ...] = ()

    def __init__(
        self,
        env: dict[str, str],
        *,
        preexec: Callable[[], None] | None = None,
        wall_seconds: int | None = None,
        run_as: Identity | None = None,
        clock: Callable[[], float] = time.monotonic,
        terminal: bool | None = None,
    ) -> None:
        self.env, self.wall_seconds, self.clock = env, wall_seconds, clock
        self.terminal = interactive() if terminal is None else terminal
        # which of stdin, stdout, stderr are terminals (after a hang-up, isatty() says no)
        self.tty_fds = [fd for fd in (0, 1, 2) if os.isatty(fd)] if self.terminal else []
        self.preexec = preexec if run_as is None else _then_become(preexec, run_as)
        self.proc: subprocess.Popen | None = None
        self.gate: Gate | None = None
        self.forwarded: list[int] = []
        self.sigints: list[float] = []  # when the last SIGINTs came (the emergency exit)
        self.armed = False
        self.timed_out = False
        self.pending: int | None = None  # a signal that came before the sandbox existed
        self.killed_early: int | None = None
        self.previous: dict[int, Any] = {}
        self.started_at = 0.0
        self.waited = False

    # ------------------------------------------------ what a backend says

    def command(self, fds: list[int]) -> list[str]:
        """The sandbox's argv; descriptors it must inherit go into `fds` (closed once started)."""
        raise NotImplementedError

    def init_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill_tree(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.terminal:  # krate's own group: the sandbox's process only
                    os.kill(self.proc.pid, signal.SIGKILL)
                else:
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def signal_workload(self, signum: int) -> None:
        """Terminal mode: pass on a signal the terminal did not send (SIGTERM, SIGUSR1...)."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signum)

    def exit_code(self, returncode: int) -> int | None:
        """The workload's exit status (128+N for a signal); None: the sandbox never ran it."""
        return 128 - returncode if returncode < 0 else returncode

    def not_started(self, outcome: Outcome, returncode: int) -> None:
        """Fill in `outcome` for a sandbox that exited without running the workload."""
        outcome.exit_code, outcome.status = EXIT_KRATE_FAILED, "failed"
        outcome.reason = f"the sandbox failed to start (exit {returncode})"

    def settle(self) -> None:
        """Before an early kill: let the sandbox get to where the kill reaches all of it."""

    # ------------------------------------------------ the sequence

    def start(self, gate: Gate | None = None) -> None:
        """Start held: behind `gate` (which holds the workload) the sandbox starts now;
        without one nothing starts before `release()`."""
        self.gate = gate
        if gate is not None:
            self._spawn()

    def release(self) -> None:
        """Let the workload run (start it, for a sandbox that could not be held)."""
        if self.gate is not None:
            self.gate.release(go=self.pending is None)  # a signal came first: it never runs
        else:
            self._spawn()
        if self.pending is not None:
            self.killed_early = self.pending
            self.kill_tree()
        if self.wall_seconds:
            signal.setitimer(signal.ITIMER_REAL, float(self.wall_seconds))

    def wait(self) -> Outcome:
        assert self.proc is not None, "release() first"
        returncode = self.proc.wait()
        self.waited = True
        if self.wall_seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return self.outcome(returncode, self.clock() - self.started_at)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if self.proc is not None and not self.waited:
                self.abort()
        finally:
            if self.wall_seconds:
                signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            self.close()

    def abort(self) -> None:
        """Nothing may run on (e.g. the run could not be recorded): stop the sandbox."""
        if self.gate is not None:
            self.gate.release(go=False)  # a held workload never starts
        self.settle()
        self.kill_tree()
        assert self.proc is not None
        self.proc.wait()

    def close(self) -> None:
        """Free what the backend holds for the run (its status descriptor)."""

    # ------------------------------------------------ inside

    def _spawn(self) -> None:
        # A signal krate inherited as ignored (`krate run ... &` from a script) stays ignored.
        # With the terminal kept, the kernel sends its signals to the workload itself.
        for s in FORWARDED:
            if self.terminal and s == getattr(signal, "SIGWINCH", None):
                continue
            if signal.getsignal(s) != signal.SIG_IGN:
                self.previous[s] = signal.signal(s, self._on_signal)
        if self.wall_seconds:
            self.previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self.started_at = self.clock()
        fds: list[int] = []
        argv = ["the sandbox"]
        preexec = self.preexec
        if self.terminal and self.CHILD_IGNORES:
            preexec = _ignoring(self.CHILD_IGNORES, preexec)
        try:
            argv = self.command(fds)
            self.proc = subprocess.Popen(
                argv, env=self.env, pass_fds=tuple(fds),
                process_group=None if self.terminal else 0,
                preexec_fn=preexec, close_fds=True, cwd=self.cwd,
            )  # fmt: skip
        except OSError as exc:
            raise KrateError(
                f"cannot start the sandbox ({argv[0]}): {exc.strerror or exc}",
                exit_code=EXIT_KRATE_FAILED,
            ) from exc
        except subprocess.SubprocessError as exc:  # preexec_fn raised in the child
            raise KrateError(
                f"cannot start the sandbox ({argv[0]}): setting its limits or identity failed "
                "in the child before it started (limits.cpu_seconds or limits.memory_mb refused "
                "by the system, the memory cgroup, or the workspace owner's ids)",
                exit_code=EXIT_KRATE_FAILED,
            ) from exc
        finally:
            for fd in fds:
                os.close(fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.forwarded.append(signum)
        resize = signum == getattr(signal, "SIGWINCH", -1)
        if self.proc is None or self._held():
            if not resize:
                self.pending = self.pending or signum
            return
        if signum == signal.SIGINT and self._insists():
            self._kill_early(signum)
            return
        if self.terminal:
            if signum == signal.SIGHUP:  # the terminal closed: nothing can be shown any more
                _detach_terminal(self.tty_fds)
            if signum in (signal.SIGHUP, signal.SIGQUIT):  # the terminal closed; the way out
                self._kill_early(signum)
            elif signum not in FROM_TERMINAL:
                self.signal_workload(signum)
            return
        init = self.init_pid()
        if init is None:  # not started yet: stop everything now
            if not resize:
                self._kill_early(signum)
            return
        with contextlib.suppress(OSError):
            os.killpg(init, signum)

    def _held(self) -> bool:
        """Held by a gate that cannot keep a signal for the workload (sandbox/hold.py's shell
        would die of it): the signal waits in krate, as before a sandbox exists."""
        gate = self.gate
        return gate is not None and gate.holding and not getattr(gate, "passes_signals", True)

    def _insists(self) -> bool:
        """The emergency exit: FORCE_AFTER_SIGINTS SIGINTs within EMERGENCY_S seconds."""
        now = self.clock()
        self.sigints = [t for t in self.sigints if now - t < EMERGENCY_S] + [now]
        if len(self.sigints) == FORCE_AFTER_SIGINTS - 1 and not self.armed:
            self.armed = True
            with contextlib.suppress(OSError):
                os.write(2, ARMED.encode())
        return len(self.sigints) >= FORCE_AFTER_SIGINTS

    def _kill_early(self, signum: int) -> None:
        if self.killed_early is None:
            self.killed_early = signum
            self.kill_tree()

    def _on_alarm(self, _signum: int, _frame: object) -> None:
        self.timed_out = True
        self.kill_tree()

    def outcome(self, returncode: int, duration: float) -> Outcome:
        code = self.exit_code(returncode)
        outcome = Outcome(0, "finished", duration_s=duration, forwarded=self.forwarded)
        if self.timed_out:
            outcome.exit_code, outcome.status = 128 + signal.SIGKILL, "timeout"
            outcome.reason = (
                f"wall-clock limit of {self.wall_seconds} s reached; the process tree was killed"
            )
            outcome.started = code is not None or self.init_pid() is not None
        elif self.killed_early is not None:
            signum = self.killed_early
            outcome.exit_code, outcome.status = 128 + signum, "interrupted"
            outcome.reason = f"{signal.Signals(signum).name} received; the sandbox was killed"
            outcome.started = code is not None
        elif code is None:
            self.not_started(outcome, returncode)
            outcome.started = False
        else:
            outcome.exit_code = code
        return outcome
