"""QEMU itself inside bubblewrap: what a VMM escape would meet besides QEMU's own filter.

QEMU parses guest-controlled virtio rings; a bug there runs code as QEMU. So QEMU
runs in its own user, mount, PID, IPC, UTS and network namespaces (`--unshare-all`:
user-mode networking needs no host network, guestfwd's relay reaches the proxy by
its Unix socket), seeing only the system's programs and libraries read-only, a
minimal /dev (plus /dev/kvm under KVM), the workspace it shares, and what krate
hands it as open descriptors (kernel, initramfs, image root, the run's folder).
`--die-with-parent` is a second way QEMU never outlives krate (PR_SET_PDEATHSIG
being the first), and killing bubblewrap ends the PID namespace with QEMU in it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def wrap(
    bwrap: str,
    qemu_argv: list[str],
    *,
    workspace: Path,
    kvm: bool = False,
    read_only: tuple[Path, ...] = (),
) -> list[str]:
    """bwrap's argv around `qemu_argv` (`read_only`: more folders QEMU's children need, e.g.
    the relay's script and the proxy socket's folder)."""
    argv = [bwrap, "--die-with-parent", "--unshare-all", "--new-session", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if kvm:
        argv += ["--dev-bind", "/dev/kvm", "/dev/kvm"]
    prefix = Path(sys.base_prefix)
    extra = [] if prefix == Path("/usr") else [prefix]
    for path in (*extra, *read_only):
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(workspace), str(workspace)]
    return [*argv, "--", *qemu_argv]
