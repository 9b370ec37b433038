"""Starting the sandbox and staying out of the way: signals, exit status, wall clock, leftovers.

The workload inherits stdin, stdout and stderr directly (nothing is pumped
through Python, so pipes, TTYs and gigabytes pass at full speed). krate forwards
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the workload's
process group; three SIGINTs kill it outright. The workload's status becomes
krate's (128+N for a signal). bubblewrap runs in its own process group so a
terminal's Ctrl-C reaches krate only, which forwards it: the workload sees one
SIGINT, and bubblewrap is not killed before the workload can clean up.

Whether the workload actually started is read from bubblewrap's
`--json-status-fd`: it reports `exit-code` only when the sandbox was set up and
the command ran, so a sandbox that failed to start is exit 125, never confused
with the workload's own exit 1.

Never reads os.environ: the caller passes the environment for the workload.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krate.errors import EXIT_CANNOT_EXECUTE, EXIT_KRATE_FAILED, EXIT_NOT_FOUND, KrateError

FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
FORCE_AFTER_SIGINTS = 3


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
            f"cannot execute {not_executable}: not an executable file",
            exit_code=EXIT_CANNOT_EXECUTE,
        )
    where = "" if "/" in name else " in the sandbox's PATH"
    raise KrateError(f"command not found{where}: {name}", exit_code=EXIT_NOT_FOUND)


# ---------------------------------------------------------------- processes


def process_identity(pid: int) -> str | None:
    """Something that changes when `pid` is reused: the start time from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int | None, identity: str | None) -> bool:
    """Whether the process that wrote a record (pid + identity) is still running."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if identity is None:
        return True
    current = process_identity(pid)
    return current is None or current == identity


# ---------------------------------------------------------------- leftovers


def sweep_stale(folder: Path) -> list[Path]:
    """Remove per-run folders under `folder` whose krate process is gone; return them."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        try:
            owner = (entry / "owner").read_text().split()
            pid, identity = int(owner[0]), owner[1] if len(owner) > 1 else None
        except (OSError, ValueError, IndexError):
            pid, identity = 0, None
        if pid and alive(pid, identity if identity != "-" else None):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def run_folder(base: Path, run_id: str):
    """A private per-run folder (0700) that is removed afterwards, even on errors.

    If krate is killed, `sweep_stale` removes it at the next start.
    """
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / run_id
    folder.mkdir(mode=0o700)
    pid = os.getpid()
    (folder / "owner").write_text(f"{pid} {process_identity(pid) or '-'}\n")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- the terminal


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


class _Status:
    """bubblewrap's JSON status stream: the sandbox's init pid, and whether the command ran."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def poll(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not chunk:
                return
            self.buffer += chunk

    def documents(self) -> list[dict]:
        self.poll()
        out = []
        for line in self.buffer.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def child_pid(self) -> int | None:
        for doc in self.documents():
            if "child-pid" in doc:
                return int(doc["child-pid"])
        return None

    def exit_code(self) -> int | None:
        for doc in self.documents():
            if "exit-code" in doc:
                return int(doc["exit-code"])
        return None


def _then_become(preexec: Callable[[], None] | None, who: Any) -> Callable[[], None]:
    """`preexec`, then drop to `who` for good (groups, then gid, then uid: all three ids)."""

    def child() -> None:
        if preexec is not None:
            preexec()
        os.setgroups(list(who.groups))
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)

    return child


def launch(
    build_argv: Callable[[int, list[int]], list[str]],
    env: dict[str, str],
    *,
    preexec: Callable[[], None] | None = None,
    wall_seconds: int | None = None,
    status_stream: bool = True,
    clock: Callable[[], float] = time.monotonic,
    after_start: Callable[[], None] | None = None,
    run_as: Any = None,
) -> Outcome:
    """Run the sandbox to completion; `build_argv(status_fd, fds)` gives the sandbox's argv.

    `run_as` (an identity.Identity, for a root krate): the child takes that user's
    groups, gid and uid before it executes the sandbox, after `preexec` (which may
    still need root, e.g. to join the run's memory cgroup).

    `build_argv` appends to `fds` any descriptor the sandbox must inherit; they are
    closed here once it started.

    `status_stream`: the backend reports through bubblewrap's JSON status fd. Without
    it (Seatbelt) the child's own status is the workload's and signals go to its
    process group.

    This is the one place a workload process is created, so that callers can
    bracket it: `after_start` runs once the sandbox exists (krate locks its own
    network away there).
    """
    read_fd, write_fd = os.pipe()
    status = _Status(read_fd)
    state = {"sigints": 0, "timed_out": False, "killed_early": None}
    forwarded: list[int] = []
    proc: subprocess.Popen | None = None
    if run_as is not None:
        preexec = _then_become(preexec, run_as)

    def init_pid() -> int | None:
        if not status_stream:
            return proc.pid if proc else None
        return status.child_pid()

    def kill_tree() -> None:
        if not status_stream:
            if proc is not None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        init = init_pid()
        if init:
            with contextlib.suppress(OSError):
                os.kill(init, signal.SIGKILL)
        if proc is not None:
            # bubblewrap's whole group: a setup child that has not reported its pid yet
            # would otherwise wait forever for its killed parent.
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

    def on_signal(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        if proc is None:
            state["pending"] = state.get("pending") or signum
            return
        init = init_pid()
        if signum == signal.SIGINT:
            state["sigints"] += 1
        if init is None or state["sigints"] >= FORCE_AFTER_SIGINTS:
            # Not started yet (or the user insists): stop everything now.
            if state["killed_early"] is None and signum != getattr(signal, "SIGWINCH", -1):
                state["killed_early"] = signum
                kill_tree()
            return
        with contextlib.suppress(OSError):
            os.killpg(init, signum)

    def on_alarm(_signum: int, _frame: object) -> None:
        state["timed_out"] = True
        kill_tree()

    # A signal krate inherited as ignored (`krate run ... &` from a script) stays ignored.
    previous = {
        s: signal.signal(s, on_signal) for s in FORWARDED if signal.getsignal(s) != signal.SIG_IGN
    }
    if wall_seconds:
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
    started = clock()
    try:
        extra_fds: list[int] = []
        try:
            argv = build_argv(write_fd, extra_fds)
            proc = subprocess.Popen(
                argv,
                env=env,
                pass_fds=((write_fd,) if status_stream else ()) + tuple(extra_fds),
                process_group=0,
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            raise KrateError(
                f"cannot start the sandbox ({argv[0]}): {exc.strerror or exc}",
                exit_code=EXIT_KRATE_FAILED,
            ) from exc
        finally:
            for fd in (write_fd, *extra_fds):
                os.close(fd)
        if after_start is not None:
            try:
                after_start()
            except BaseException:
                # e.g. the run could not be recorded: nothing may run on. Killed before it
                # names its init, bubblewrap can leave that init behind (and the caller's
                # pipes open): wait briefly for the name.
                deadline = time.monotonic() + 2.0
                while status_stream and init_pid() is None and proc.poll() is None:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
                kill_tree()
                proc.wait()
                raise
        if state.get("pending"):
            state["killed_early"] = state["pending"]
            kill_tree()
        if wall_seconds:
            signal.setitimer(signal.ITIMER_REAL, float(wall_seconds))
        returncode = proc.wait()
        if wall_seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    duration = clock() - started
    if not status_stream:
        status.buffer = b'{"exit-code": %d}' % (128 - returncode if returncode < 0 else returncode)
    code = status.exit_code()
    os.close(read_fd)
    outcome = Outcome(0, "finished", duration_s=duration, forwarded=forwarded)
    if state["timed_out"]:
        outcome.exit_code, outcome.status = 128 + signal.SIGKILL, "timeout"
        outcome.reason = (
            f"wall-clock limit of {wall_seconds} s reached; the process tree was killed"
        )
        outcome.started = code is not None or status.child_pid() is not None
    elif state["killed_early"] is not None:
        signum = state["killed_early"]
        outcome.exit_code, outcome.status = 128 + signum, "interrupted"
        outcome.reason = f"{signal.Signals(signum).name} received; the sandbox was killed"
        outcome.started = code is not None
    elif code is None:
        if returncode < 0:
            outcome.exit_code, outcome.status = 128 - returncode, "interrupted"
            outcome.reason = f"bubblewrap was killed by {signal.Signals(-returncode).name}"
        else:
            outcome.exit_code, outcome.status = EXIT_KRATE_FAILED, "failed"
            outcome.reason = f"the sandbox failed to start (bubblewrap exit {returncode})"
        outcome.started = False
    else:
        outcome.exit_code = code
    return outcome
