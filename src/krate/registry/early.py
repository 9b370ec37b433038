"""The registry transport started at entry, with nothing loaded but `os` and `sys`.

cli/main.py starts it for login, push and image pull before anything else the command
loads (and before the lockdown), so that the transport's own start (an interpreter,
http.client, ssl, the CA certificates: some 40 to 60 ms) overlaps krate's (Typer, the
store, the command); the command takes it over as a client.Transport
(cli/common.take_transport). client.py, with dataclasses and the job's logic, loads
later. Standard library only; it never opens a socket.

It is started with `os.fork` and `os.execve` (`spawn`, `Spawned`), not `subprocess`:
importing subprocess (with locale, re, selectors, threading and contextlib, about 9 ms)
came first on the path of every pull, where krate then waited for the transport to be
ready (docs/images.md). The child does what `Popen(close_fds=True)` does: the three pipes
on 0, 1 and 2, every other descriptor closed, only the environment given; a failed exec
is raised here as Popen raises it.
"""

from __future__ import annotations

import os
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transport.py")
# Variables the transport may see: OpenSSL's own CA bundle overrides, nothing else.
CHILD_ENV_NAMES = ("SSL_CERT_FILE", "SSL_CERT_DIR")
# Its one argument: do not read the system's CA certificates before the job (transport.py).
TLS_LATER = "--tls-later"

_held: list = []  # the started process, or the OSError that stopped it


def child_env(environ) -> dict[str, str]:
    """The transport's whole environment: OpenSSL's CA overrides, nothing secret."""
    return {k: environ[k] for k in CHILD_ENV_NAMES if environ.get(k)}


def start(args: list[str] | tuple[str, ...] = ()) -> None:
    """Start `python -I -S transport.py` now; a failure is reported when it is taken.

    When the command line names a loopback registry (`localhost:5000/app:1`), which is
    mostly plain HTTP, the transport is told not to read the system's CA certificates
    ahead of the job (some 20 to 40 ms of CPU, which the command's own start-up needs):
    a hint about speed only, since the transport decides from the job what it trusts.
    """
    extra = (TLS_LATER,) if any(names_loopback(a) for a in args) else ()
    try:
        _held[:] = [spawn([sys.executable, "-I", "-S", SCRIPT, *extra], child_env(os.environ))]
    except OSError as exc:
        _held[:] = [exc]


def names_loopback(word: str) -> bool:
    """Whether a command-line word starts with a loopback registry (`localhost`, `127.*`,
    `[::1]`, with or without a port or a path). String checks only: nothing is imported."""
    host = word.partition("/")[0].lower()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host in ("localhost", "::1") or (host.startswith("127.") and host.count(".") == 3)


def take():
    """The process started at entry (once), or None; raises the OSError that stopped it."""
    if not _held:
        return None
    held = _held.pop()
    if isinstance(held, OSError):
        raise held
    return held


def spawn(argv: list[str], env: dict[str, str]) -> Spawned:
    """Run `argv` (its first word a path) with `env` only, its stdin, stdout and stderr pipes
    to this process and no other descriptor of it; an exec that fails raises its OSError."""
    fds = [*os.pipe(), *os.pipe(), *os.pipe()]  # close-on-exec, as Python makes them
    report_r, report_w = os.pipe()
    passed = _inheritable()
    try:
        pid = os.fork()
    except BaseException:
        for fd in (*fds, report_r, report_w):
            os.close(fd)
        raise
    if pid == 0:  # the child: descriptors, then exec; nothing else runs here
        try:
            for source, target in ((fds[0], 0), (fds[3], 1), (fds[5], 2)):
                if source == target:  # krate started without it: the pipe took the number
                    os.set_inheritable(target, True)
                else:
                    os.dup2(source, target)
            if passed is None:  # not listed: every number but the report's
                os.closerange(3, report_w)
                os.closerange(report_w + 1, os.sysconf("SC_OPEN_MAX"))
            for fd in passed or ():
                try:  # noqa: SIM105
                    os.close(fd)
                except OSError:
                    pass
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(report_w, str(exc.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(report_w)
    for fd in (fds[0], fds[3], fds[5]):
        os.close(fd)
    failed = b""
    try:
        while chunk := os.read(report_r, 16):  # EOF: the exec closed it
            failed += chunk
    finally:
        os.close(report_r)
    if failed:
        os.waitpid(pid, 0)
        for fd in (fds[1], fds[2], fds[4]):
            os.close(fd)
        errno = int(failed) if failed.isdigit() else 0
        raise OSError(errno, os.strerror(errno), argv[0])
    return Spawned(argv, pid, fds[1], fds[2], fds[4])


def _inheritable() -> list[int] | None:
    """krate's descriptors above 2 that an exec would pass on (not close-on-exec: Python
    opens its own so, some come from krate's parent), or None when they cannot be listed.
    Listed before the fork: the child then closes just these (Popen lists them too)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        found = []
        for name in names:
            fd = int(name)
            try:
                if fd > 2 and os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the listing's own descriptor, closed by now
                continue
        return found
    return None


class Spawned:
    """The started process, as much of `subprocess.Popen` as krate uses of the transport:
    `pid`, `args`, `returncode`, the pipes `stdin`/`stdout`/`stderr` (binary files),
    `poll()`, `wait(timeout)` (raising subprocess.TimeoutExpired) and `kill()`."""

    def __init__(self, argv: list[str], pid: int, stdin: int, stdout: int, stderr: int) -> None:
        self.args, self.pid, self.returncode = argv, pid, None
        self.stdin = open(stdin, "wb")  # noqa: SIM115 (closed by krate, as Popen's are)
        self.stdout = open(stdout, "rb")  # noqa: SIM115
        self.stderr = open(stderr, "rb")  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    break
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        import time

        deadline, delay = time.monotonic() + timeout, 0.0005
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                import subprocess

                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:  # noqa: SIM105 (contextlib is what this module does without)
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
