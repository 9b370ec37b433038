"""The bridge's hold: a started workload waits until the run is recorded.

The bridge (bridge.py, inside the sandbox) reads one byte from the `go` pipe before it
starts the workload and then writes `started`, or one line `krate-bridge: REASON`, on
the `ack` pipe. Only an explicit byte lets the workload run: end of file (krate was
killed, or `release(go=False)`) makes the bridge exit without it. This is the `Gate`
of sandbox/backend.py for a backend whose network goes through the bridge.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from krate.errors import EXIT_KRATE_FAILED, how_it_ended


class BridgeGate:
    """The go pipe (krate writes, the bridge reads) and the ack pipe (the other way)."""

    def __init__(self) -> None:
        self.go_read, go_write = os.pipe()
        self.go_write: int | None = go_write
        ack_read, self.ack_write = os.pipe()
        self.ack_read: int | None = ack_read
        os.set_blocking(ack_read, False)
        self.ack: str | None = None  # what the bridge said, once read (see unstarted())
        # Called with the sandbox's init pid before the go-ahead (the backend does:
        # bubblewrap's launcher); set when the bridge serves DNS (netns.open_low_ports).
        self.before_go: Callable[[int], str | None] | None = None
        self.setup_error: str | None = None  # what before_go said failed, if anything

    @property
    def holding(self) -> bool:
        return self.go_write is not None

    def fds(self) -> tuple[int, ...]:
        """What the sandbox inherits: the go pipe's reading end, the ack pipe's writing end."""
        return (self.go_read, self.ack_write)

    def bridge_args(self) -> list[str]:
        return ["--go", str(self.go_read), "--ack", str(self.ack_write)]

    def prepare(self, init_pid: int | None) -> None:
        """Before the go-ahead: set up the sandbox from outside (`before_go`), if asked to."""
        if self.before_go is not None and self.go_write is not None:
            self.setup_error = (
                "the sandbox's init is unknown" if init_pid is None else self.before_go(init_pid)
            )

    def release(self, go: bool = True) -> None:
        """Let the held workload start (`go`), or make the bridge exit without it.

        A bridge that already died cannot take the go-ahead: that is no error here
        (no broken pipe reaches the CLI); `unstarted()` reports it once the sandbox exited.
        """
        if self.go_write is None:
            return
        try:
            if go:
                os.write(self.go_write, b"1")
        except OSError:  # BrokenPipeError: the bridge is gone, the workload never ran
            pass
        finally:
            os.close(self.go_write)
            self.go_write = None

    def unstarted(self, status: int) -> tuple[int, str] | None:
        """After the sandbox exited with the bridge's `status`: None when the bridge
        started the workload (its status is the workload's), else (exit code, reason):
        125, or 126/127 when the command could not be executed."""
        if self.ack is None and self.ack_read is not None:
            chunks = []
            with contextlib.suppress(OSError):  # BlockingIOError: nothing was written
                while chunk := os.read(self.ack_read, 4096):
                    chunks.append(chunk)
            os.close(self.ack_read)
            self.ack_read = None
            self.ack = b"".join(chunks).decode(errors="replace").strip()
        # `started` anywhere: only the bridge writes here before the workload exists, and
        # a workload (which could reach the pipe through /proc) exists only once started.
        lines = [] if self.ack is None else self.ack.split("\n")
        if self.ack is None or "started" in lines:
            return None
        said = lines[0].removeprefix("krate-bridge: ")[:300]
        if said:
            reason = f"the egress bridge stopped before the workload started: {said}"
        else:
            reason = f"the egress bridge {how_it_ended(status)} before the workload started"
        return (status if said and status in (126, 127) else EXIT_KRATE_FAILED), reason

    def close(self) -> None:
        """A bridge still waiting exits without the workload; an ack never read is dropped."""
        self.release(go=False)
        if self.ack_read is not None:
            os.close(self.ack_read)
            self.ack_read = None
