"""A root krate's image run as the workspace owner: the image root made reachable privately.

Unpacked roots live in the data folder (0700, root's). The sandbox runs as the workspace's
owner (sandbox/identity.py), and bubblewrap, running as that user, must reach the root to
bind it. So the launcher child, still root, enters a mount namespace of its own and binds
the root onto an empty per-run folder under /tmp; only that child (and the sandbox it
starts) sees the root there, and it then drops to the owner as usual. The host's view is
unchanged: the folder stays empty and is removed after the run. ctypes is already loaded
on the run path (netguard's lockdown), so this costs no import.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


@contextlib.contextmanager
def staged(rootfs: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """(the folder the sandbox finds the root at, what the launcher child calls first)."""
    stage = Path(tempfile.mkdtemp(prefix="krate-image-", dir="/tmp"))
    os.chmod(stage, 0o755)
    libc = ctypes.CDLL(None, use_errno=True)
    source, target, root = os.fsencode(rootfs), os.fsencode(stage), b"/"

    def enter() -> None:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
        if libc.mount(None, root, None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making mounts private failed")
        if libc.mount(source, target, None, MS_BIND | MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), "binding the image root failed")

    try:
        yield stage, enter
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(stage)


def then(first: Callable[[], None], preexec: Callable[[], None] | None) -> Callable[[], None]:
    def both() -> None:
        first()
        if preexec is not None:
            preexec()

    return both
