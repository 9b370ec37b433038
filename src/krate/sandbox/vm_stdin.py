"""krate's stdin into the micro-VM: a private pipe QEMU reads, filled by a thread in krate.

QEMU's `-chardev stdio` backs the guest's `krate.stdin` virtio-serial port with
QEMU's own descriptor 0 (qemu.py). Its reader pulls bytes only while the guest
has the port open and room for them, and reports end of file only once the pipe
is drained, so nothing is lost at the end (unlike a socket chardev, whose hang-up
watch drops what the guest has not read yet: docs/vm.md). No socket is involved,
so krate's import contract (netguard/static.py: no networking module outside the
egress helpers) and its kernel lockdown are untouched, and no helper process is
started: a daemon thread in krate's own process does the copying.

Why a pipe of krate's own rather than krate's stdin itself as QEMU's descriptor 0:
QEMU makes its descriptor 0 non-blocking (and on a terminal changes its modes)
and restores it only when it exits normally; on the caller's shared pipe or
terminal a killed QEMU would leave that behind for the caller's shell. krate
holds the pipe's only write end (close-on-exec: QEMU and every other child never
inherit it), so the guest sees end of file exactly when krate's stdin ends, and
QEMU gets one read-only descriptor of bytes and nothing else of krate's.

The thread reads krate's stdin eagerly: bytes the workload never reads are
consumed all the same (up to the pipe's buffer plus what is in flight), unlike a
namespace sandbox where the workload shares krate's descriptor. A workload that
does not read does not hang the run: when QEMU exits the thread's write fails
(EPIPE) and it ends; a thread still waiting for input is a daemon thread and does
not keep krate from exiting. A terminal is relayed as lines (the host's terminal
stays in its normal mode, Ctrl-D ends the input); the workload has no terminal
of its own. A krate started in the background of a terminal passes nothing
(reading would stop it with SIGTTIN).
"""

from __future__ import annotations

import contextlib
import os

CHUNK = 1 << 16


def relayed(fd: int = 0) -> bool:
    """Whether krate's `fd` is worth relaying (not a terminal krate is in the background of)."""
    try:
        if not os.isatty(fd):
            return True
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def copy(src: int, dst: int) -> None:
    """`src` into `dst` until end of file (or either fails), then close `dst`."""
    try:
        while True:
            try:
                data = os.read(src, CHUNK)
            except OSError:  # no stdin (EBADF), a terminal that went away (EIO)
                break
            view = memoryview(data)
            if not view:
                break
            while view:
                view = view[os.write(dst, view) :]  # BrokenPipeError once QEMU is gone
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(dst)


class Relay:
    """The pipe: `reader` goes to QEMU as its descriptor 0, `start()` after QEMU started."""

    def __init__(self, src: int = 0) -> None:
        self.src = src
        self.reader, self.writer = os.pipe()  # both close-on-exec

    def start(self) -> None:
        """Close krate's copy of the read end; copy in a daemon thread (or end the input now)."""
        import threading

        os.close(self.reader)
        writer, self.reader, self.writer = self.writer, -1, -1  # the thread's from here
        if not relayed(self.src):
            os.close(writer)
            return
        threading.Thread(
            target=copy, args=(self.src, writer), name="krate-vm-stdin", daemon=True
        ).start()

    def abandon(self) -> None:
        """QEMU never started: close both ends."""
        for fd in (self.reader, self.writer):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.reader = self.writer = -1
