"""The Linux backend: a SandboxSpec as a bubblewrap command line.

Read-only root, writable workspace and allow_write folders, read-only protected
paths inside them (with their parent folders pinned so they cannot be renamed
away), hidden paths (empty read-only tmpfs for folders, empty read-only files for files), a
private /tmp, empty /run, fresh /proc and minimal /dev, every namespace
unshared (user and network always), all capabilities dropped, no new user
namespaces (`--disable-userns`), a seccomp filter for what namespaces do not
isolate (`--seccomp`, sandbox/seccomp.py), a new terminal session (no TIOCSTI
injection into the user's terminal) and death with krate (`--die-with-parent`).

Builds argv only; launching is supervise.py's job. Never passes environment
values on the command line (other users can read /proc/PID/cmdline).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from krate.sandbox import seccomp as seccomp_filter
from krate.sandbox.spec import SOCKET_DIRS, SandboxSpec, mount_order


@functools.lru_cache(maxsize=8)
def supports(exe: str, option: str) -> bool:
    """Whether this bubblewrap binary knows `option` (its option names are plain strings in it).

    Reading the binary costs well under a millisecond; running `bwrap --help` would cost a process.
    """
    try:
        with open(exe, "rb") as f:
            return option.encode() + b"\0" in f.read()
    except OSError:
        return False


def open_empty() -> int:
    """A fresh descriptor that reads as empty: bubblewrap copies it into a hidden file's place."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def command(
    spec: SandboxSpec,
    exe: str,
    *,
    status_fd: int | None = None,
    fds: list[int] | None = None,
    empty: Callable[[], int] = open_empty,
    seccomp: Callable[[], int | None] = seccomp_filter.pipe_fd,
) -> list[str]:
    """The full bwrap argv for `spec` (the workload's argv last, after `--`).

    A hidden file becomes an empty read-only file (a copy of an empty descriptor,
    each its own: bubblewrap reads it to the end). `seccomp()` gives a descriptor
    holding the workload's seccomp filter (sandbox/seccomp.py). The descriptors opened
    are appended to `fds`; the launcher passes them to bubblewrap and closes them.
    """
    fds = [] if fds is None else fds
    args = [
        exe,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    if supports(exe, "--disable-userns"):
        args.append("--disable-userns")
    filter_fd = seccomp()
    if filter_fd is not None:
        fds.append(filter_fd)
        args += ["--seccomp", str(filter_fd)]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", spec.tmpdir]
    for folder in SOCKET_DIRS:
        if os.path.isdir(folder) and not os.path.islink(folder):
            args += ["--tmpfs", folder]
    for kind, path in mount_order(spec):
        p = str(path)
        if kind == "bind":
            args += ["--bind", p, p]
        elif kind == "ro":
            args += ["--ro-bind", p, p]
        elif path.is_dir():
            args += ["--tmpfs", p, "--remount-ro", p]
        else:
            fd = empty()
            fds.append(fd)
            args += ["--perms", "0444", "--ro-bind-data", str(fd), p]
    for bind in spec.extra_binds:
        args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), str(bind.dest)]
    args += ["--chdir", str(spec.cwd)]
    fds.extend(spec.pass_fds)  # not consumed by bubblewrap: they reach the command as they are
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    return [*args, "--", *spec.argv]


def userns_refused(exe: str) -> bool:
    return supports(exe, "--disable-userns")


def visible_inside(path: Path, spec: SandboxSpec) -> bool:
    """Whether `path` (resolved) can be seen by the workload: for the 126/127 checks."""
    from krate.sandbox.spec import is_within

    last = None
    for kind, rule_path in mount_order(spec):
        if is_within(path, rule_path):
            last = kind
    if last is not None:
        return last != "hide"
    covered = [Path(spec.tmpdir), *map(Path, SOCKET_DIRS)]
    return not any(is_within(path, c) for c in covered)
