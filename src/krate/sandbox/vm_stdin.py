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
not keep krate from exiting. A krate started in the background of a terminal
passes nothing (reading would stop it with SIGTTIN).

A terminal (krate in its foreground) is passed raw: `raw()` turns off the host's
echo, line editing and keyboard signals for the run (supervise.terminal_kept
restores them on every exit path krate lives through), so every key, Ctrl-C and
Ctrl-D included, travels as a byte to the guest's own terminal (a virtio console,
vm_initramfs.py), whose line discipline echoes, edits and signals. Three Ctrl-]
in a row are krate's emergency exit: the copier calls `escape` (the VM is killed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

CHUNK = 1 << 16
ESCAPE = b"\x1d" * 3  # Ctrl-] three times in a row: the emergency exit of a raw terminal


def terminal(fd: int = 0) -> bool:
    """Whether the guest gets a terminal: krate's `fd` is one and krate is in its foreground."""
    try:
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def size(fd: int = 0) -> tuple[int, int]:
    """(rows, columns) of the terminal on `fd`; (24, 80) when it does not say."""
    try:
        cols, rows = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


def raw(fd: int = 0) -> None:
    """Bytes as typed and shown: no echo, line editing, signals from keys, output processing."""
    import termios

    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    mode[1] &= ~termios.OPOST  # the guest's terminal already turns \n into \r\n
    mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, mode)


def relayed(fd: int = 0) -> bool:
    """Whether krate's `fd` is worth relaying (not a terminal krate is in the background of)."""
    try:
        if not os.isatty(fd):
            return True
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def copy(src: int, dst: int, escape: Callable[[], None] | None = None) -> None:
    """`src` into `dst` until end of file (or either fails), then close `dst`.

    With `escape`, ESCAPE in the input (across reads) calls it."""
    tail = b""
    try:
        while True:
            try:
                data = os.read(src, CHUNK)
            except OSError:  # no stdin (EBADF), a terminal that went away (EIO)
                break
            view = memoryview(data)
            if not view:
                break
            if escape is not None:
                tail += data
                if ESCAPE in tail:
                    escape()
                    tail = b""
                tail = tail[-(len(ESCAPE) - 1) :]
            while view:
                view = view[os.write(dst, view) :]  # BrokenPipeError once QEMU is gone
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(dst)


class Relay:
    """The pipe: `reader` goes to QEMU as its descriptor 0, `start()` after QEMU started."""

    def __init__(self, src: int = 0, escape: Callable[[], None] | None = None) -> None:
        self.src, self.escape = src, escape
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
            target=copy, args=(self.src, writer, self.escape), name="krate-vm-stdin", daemon=True
        ).start()

    def abandon(self) -> None:
        """QEMU never started: close both ends."""
        for fd in (self.reader, self.writer):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.reader = self.writer = -1
