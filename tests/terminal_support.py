"""A real pseudo-terminal for the interactive tests: a session led by the program under test.

`Terminal` opens a pty pair (the standard library's os.openpty), starts `argv` as the
leader of a new session whose controlling terminal is the pty's slave (as a terminal
emulator starts a shell), as root or as an ordinary user who owns the pty (as login
does), and keeps the master to type, read, resize and hang up. Every wait polls with
a deadline (conftest.wait_for).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import signal
import struct
import subprocess
import termios
from pathlib import Path

from .conftest import wait_for


def _take_terminal() -> None:
    """In the child, after setsid: stdin becomes the session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, user: str | None = None,
        rows: int = 24, cols: int = 80,
    ) -> None:  # fmt: skip
        self.master, self.slave = os.openpty()
        self.resize(rows, cols, signal_it=False)
        kw: dict = {}
        if user is not None:
            entry = pwd.getpwnam(user)
            os.fchown(self.slave, entry.pw_uid, entry.pw_gid)
            kw = {"user": user, "group": entry.pw_gid, "extra_groups": []}
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=_take_terminal, **kw,
        )  # fmt: skip
        self.out = b""

    # ------------------------------------------------ the keyboard and the screen

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def pump(self) -> bytes:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                chunk = os.read(self.master, 65536)
                if not chunk:
                    break
                self.out += chunk
        return self.out

    def expect(self, pattern: bytes, since: int = 0, timeout: float = 30.0) -> int:
        """Wait for `pattern` (a regex) in the output after offset `since`; its end offset."""
        regex = re.compile(pattern)

        def found():
            match = regex.search(self.pump(), since)
            return match.end() if match else None

        try:
            return wait_for(found, timeout, what=f"{pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen so far: {self.out[since:]!r}") from None

    def resize(self, rows: int, cols: int, signal_it: bool = True) -> None:
        """Like a terminal window resized: the kernel sends SIGWINCH to the foreground group."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # ------------------------------------------------ the terminal itself

    def foreground(self) -> int:
        return os.tcgetpgrp(self.master)

    def modes(self) -> str:
        """`stty -g` of the terminal."""
        return subprocess.run(
            ["stty", "-g"], stdin=self.slave, capture_output=True, text=True, check=True
        ).stdout.strip()

    def queued_input(self) -> int:
        """Bytes waiting to be read by the terminal's programs (what TIOCSTI would add)."""
        return struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0]

    def wait(self, timeout: float = 60.0) -> int:
        wait_for(lambda: self.pump() is not None and self.proc.poll() is not None, timeout,
                 what="the terminal's program to exit")  # fmt: skip
        self.pump()
        return self.proc.returncode

    def hang_up(self) -> None:
        """Close the terminal window: the master goes away."""
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def group_states(pgid: int) -> dict[int, str]:
    """Every process of process group `pgid`: its state letter (R, S, T ...).

    A pid namespace's init (bubblewrap's, pid 1 inside) is left out: the kernel never
    stops it with a signal it has no handler for, and it only waits for the workload.
    """
    states = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        nspid = next((line.split() for line in status.splitlines() if line.startswith("NSpid")), [])
        if int(fields[2]) == pgid and nspid[-1:] != ["1"]:
            states[int(entry.name)] = fields[0]
    return states


def waiting(term: Terminal, name: str) -> None:
    """Wait until the foreground's program `name` sleeps (waits for input): a key sent just
    before then can be lost by the program itself (Python's REPL checks for a SIGINT
    and then blocks in select(), a race of its own)."""

    def asleep() -> bool:
        states = group_states(term.foreground())
        return any(comm(pid) == name and state == "S" for pid, state in states.items())

    wait_for(asleep, what=f"{name} waiting for input")
