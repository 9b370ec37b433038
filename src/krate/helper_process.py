"""The parent side of a helper process: start it, read its lines, end it.

krate's network helpers (the egress proxy, the registry transport) are separate
standard-library processes that report in lines on their stdout. Starting one
isolated, reading its stream in a thread to the end, and ending it so that no
line is lost and no descriptor is closed under the reader are the same for
both; what a line means is the caller's (egress/recorder.py, netguard/ledger.py).

Standard library only, no dataclasses: it is on the path of every networked
`krate run` (ARCHITECTURE.md, "Start-up budget"). It never opens a socket.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import select
import subprocess

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping
    from pathlib import Path
    from typing import IO, Protocol

    class Reader(Protocol):
        """What `stop()` waits for: a LineReader, or an object reading through one."""

        def join(self, timeout: float | None = None) -> bool: ...


CHUNK = 65536


class QuickThread:
    """A daemon thread whose `start()` does not wait until it runs.

    `threading.Thread.start` blocks until the new thread was scheduled and ran its
    first lines: 2-14 ms measured on 2 busy CPUs, where a networked run starts two
    threads (the proxy's reader, the sandbox's set-up) on its critical path, while the
    proxy and bubblewrap start on the same CPUs. This one is started with `_thread`
    and joined on a lock it holds while it runs. `target` must not raise (an exception
    would be printed as unraisable); not listed by `threading.enumerate()`, like a daemon
    thread it never holds the interpreter's exit.
    """

    def __init__(self, target: Callable[[], None]) -> None:
        self.target = target
        self._running: _thread.LockType | None = None  # held while the target runs

    def start(self) -> QuickThread:
        lock = _thread.allocate_lock()
        lock.acquire()
        self._running = lock
        _thread.start_new_thread(self._run, (lock,))
        return self

    def _run(self, lock: _thread.LockType) -> None:
        try:
            self.target()
        finally:
            lock.release()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end (up to `timeout` seconds); False when it still runs."""
        lock = self._running
        if lock is None:
            return True
        if not lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        lock.release()
        return True

    def is_alive(self) -> bool:
        return self._running is not None and self._running.locked()


def spawn(
    python: str,
    script: str | Path,
    *,
    env: Mapping[str, str],
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    pass_fds: Collection[int] = (),
    cwd: str | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen:
    """Start `python -I -S script [args]`: no site-packages, no .pth files, no PYTHON*
    variables, only `env` and the descriptors named; stdin and stdout are pipes (the job,
    the report).

    Raises OSError when it cannot start; the caller says which helper in its message.
    """
    return subprocess.Popen(
        [python, "-I", "-S", str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=dict(env),
        pass_fds=tuple(pass_fds),
        close_fds=True,
        cwd=cwd,
    )


class LineReader:
    """Reads a helper's stream in a daemon thread and hands each line to the caller.

    - `on_line(raw)`: every complete line, without its newline, in order.
    - `on_torn(raw)`: the last line when the stream ended in the middle of it (the
      helper died mid-line); dropped when not given.
    - `wait()` / `on_wait()`: when `wait` returns seconds, `on_wait` is called once no
      data came for that long (a batch is due); None waits for data as long as it takes.
    - `on_end()`: once, at the end of the stream or after a failure, in the thread.

    A callback that raises stops the delivery of lines (the exception is kept in
    `error`), but the stream is still read to its end so the helper never blocks
    on a full pipe. The reader never closes `fd`: `stop()` does, once it ended.
    """

    def __init__(
        self,
        fd: int,
        on_line: Callable[[bytes], None],
        *,
        name: str,
        on_torn: Callable[[bytes], None] | None = None,
        wait: Callable[[], float | None] | None = None,
        on_wait: Callable[[], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.fd = fd
        self.on_line, self.on_torn, self.on_end = on_line, on_torn, on_end
        self.wait, self.on_wait = wait, on_wait
        self.error: BaseException | None = None
        self.name = name
        self._thread = QuickThread(self._run)

    def start(self) -> LineReader:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of the stream; False when it is still open after `timeout`."""
        return self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # kept for the caller; the rest is read and dropped
            self.error = exc
            with contextlib.suppress(OSError):
                while os.read(self.fd, CHUNK):
                    pass
        finally:
            try:
                if self.on_end is not None:
                    self.on_end()
            except BaseException as exc:
                self.error = self.error or exc

    def _read(self) -> None:
        buffer = b""
        while True:
            timeout = self.wait() if self.wait is not None else None
            if timeout is not None:
                readable, _, _ = select.select([self.fd], [], [], timeout)
                if not readable:
                    if self.on_wait is not None:
                        self.on_wait()
                    continue
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for raw in lines:
                self.on_line(raw)
        if buffer and self.on_torn is not None:
            self.on_torn(buffer)


def wait(process: subprocess.Popen, timeout: float) -> int:
    """`process.wait(timeout)`, woken by the exit itself where the kernel can say so.

    Popen's wait with a timeout polls, sleeping 0.5, 1, 2, 4 ... ms in between, so it
    returns up to several ms after the exit: at the end of every networked run, where
    krate waits for its proxy. A pidfd (Linux 5.3+) becomes readable at the exit; the
    child is then reaped by Popen as before. Elsewhere: Popen's own wait.
    """
    if process.returncode is None and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(process.pid)
        except OSError:
            fd = None
        if fd is not None:
            try:
                if not select.select([fd], [], [], timeout)[0]:
                    raise subprocess.TimeoutExpired(process.args, timeout)
            finally:
                os.close(fd)
    return process.wait(timeout)


def stop(
    process: subprocess.Popen,
    timeout: float = 5.0,
    reader: Reader | None = None,
    *,
    kill: bool = False,
) -> int:
    """End a helper and return its exit status.

    Its stdin is closed (a helper exits at the end of its job), or it is killed at
    once with `kill`; one still running after `timeout` seconds is killed. Then the
    reader gets up to `timeout` to reach the end of the stream; the pipes are closed
    only after it did, so a descriptor is never closed (and its number reused) under
    a reader that is still in it.
    """
    if kill and process.poll() is None:
        process.kill()
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        code = wait(process, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    if reader is not None and not reader.join(timeout):
        return code  # someone else (a child of the helper) holds the stream open
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return code
