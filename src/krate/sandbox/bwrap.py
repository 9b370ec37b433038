"""The Linux backend: a SandboxSpec as a bubblewrap command line.

Read-only root, writable workspace and allow_write folders, read-only protected
paths inside them (with their parent folders pinned so they cannot be renamed
away), hidden paths (empty read-only tmpfs for folders, empty read-only files for files), a
private /tmp, empty /run, fresh /proc and minimal /dev, every namespace
unshared (user and network always), all capabilities dropped, no new user
namespaces (`--disable-userns`), a seccomp filter for what namespaces do not
isolate (`--seccomp`, sandbox/seccomp.py) and death with krate (`--die-with-parent`).

The terminal: when stdin is one (`terminal_defence`), the workload stays in the
terminal's session so job control, `stty`, SIGWINCH and Ctrl-Z work, and the
seccomp filter's TIOCSTI/TIOCLINUX refusal (or a kernel that refuses TIOCSTI,
`dev.tty.legacy_tiocsti = 0`) keeps it from pushing keystrokes into the terminal
that would run after krate exits. Otherwise, and when neither defence exists, it
runs in a new session (`--new-session`), which has no terminal at all.

/proc's kernel knobs (`PROC_READ_ONLY`) are bound read-only and its leak files
(`PROC_MASKED`) replaced by empty read-only files, always: bubblewrap does the
first only when it keeps the caller's user namespace, and krate never does, so
a root caller's sandbox (host uid 0) could otherwise write sysctls such as
kernel.core_pattern. bubblewrap resolves bind sources on the host side, so the
read-only copies come from the host's /proc; /proc/sys shows each reader its own
namespaces' values whichever proc mount it is read through. Other entries are
named only when the host has them (the kernel is the same, so the sandbox's /proc
has them too); /proc/sys always is, so a host /proc without it fails the run.

When a root krate runs the sandbox as the workspace's owner (`spec.run_as`,
sandbox/identity.py), bubblewrap runs as that user: a path the user cannot
reach gets no mount (bubblewrap could not make it, the workload cannot reach it).

Builds argv only; launching is supervise.py's job. Never passes environment
values on the command line (other users can read /proc/PID/cmdline).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from krate.sandbox import seccomp as seccomp_filter
from krate.sandbox.spec import SOCKET_DIRS, SandboxSpec, mount_order

# Writable kernel settings (sysctls, SysRq, IRQ affinity, PCI config, ACPI wakeup, ...).
PROC_READ_ONLY = (
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
)
# What the kernel leaks about the host: memory, timers, symbols, scheduler state (the key
# lists, /proc/keys and /proc/key-users, are hidden paths of their own: sandbox/keyrings.py).
PROC_MASKED = (
    "/proc/kcore",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kallsyms",
)


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


def data_fd(data: bytes) -> int:
    """A descriptor reading `data` from its start (a memfd: never a file on disk)."""
    fd = os.memfd_create("krate-data", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


LEGACY_TIOCSTI = "/proc/sys/dev/tty/legacy_tiocsti"
# GNU env (coreutils 8.31+) puts back, in the workload, the signals bubblewrap ignores.
ENV = "/usr/bin/env"
DEFAULT_SIGNALS = "--default-signal=INT,QUIT"


def terminal_defence(
    arch: str | None = None, knob: str = LEGACY_TIOCSTI, env: str = ENV
) -> str | None:
    """What keeps a workload in the terminal's session from injecting input; None: nothing
    does (or the workload's signals could not be reset), so it needs a new session."""
    if not os.path.exists(env) or not supports(env, "default-signal"):
        return None
    if seccomp_filter.supported(arch):
        return "the seccomp filter refuses TIOCSTI and TIOCLINUX"
    if kernel_refuses_tiocsti(knob):
        return "the kernel refuses TIOCSTI (dev.tty.legacy_tiocsti = 0)"
    return None


def kernel_refuses_tiocsti(knob: str = LEGACY_TIOCSTI) -> bool:
    """Linux 6.2+ with `dev.tty.legacy_tiocsti = 0`: TIOCSTI needs CAP_SYS_ADMIN."""
    try:
        with open(knob) as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def command(
    spec: SandboxSpec,
    exe: str,
    *,
    status_fd: int | None = None,
    fds: list[int] | None = None,
    empty: Callable[[], int] = open_empty,
    seccomp: Callable[[], int | None] = seccomp_filter.pipe_fd,
    terminal: bool = False,
    hold: Sequence[str] = (),
) -> list[str]:
    """The full bwrap argv for `spec` (the workload's argv last, after `--`).

    A hidden file becomes an empty read-only file (a copy of an empty descriptor,
    each its own: bubblewrap reads it to the end). `seccomp()` gives a descriptor
    holding the workload's seccomp filter (sandbox/seccomp.py). The descriptors opened
    are appended to `fds`; the launcher passes them to bubblewrap and closes them.
    `terminal`: keep the terminal's session (only where `terminal_defence()` says so);
    bubblewrap then ignores SIGINT and SIGQUIT, and the workload gets them back.
    `hold`: the command that starts first and executes the rest (sandbox/hold.py), before
    the terminal's `env`, so that it keeps ignoring them until the workload runs.
    """
    fds = [] if fds is None else fds
    args = [
        exe,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        *(() if terminal else ("--new-session",)),
        "--cap-drop",
        "ALL",
    ]
    if supports(exe, "--disable-userns"):
        args.append("--disable-userns")
    filter_fd = seccomp()
    if filter_fd is not None:
        fds.append(filter_fd)
        args += ["--seccomp", str(filter_fd)]
    elif terminal and not kernel_refuses_tiocsti():  # never the terminal without a defence
        terminal = False
        args.insert(4, "--new-session")
    # The writable tmpfs mounts hold at most limits.memory_mb (their pages count in the
    # memory cgroup too; the size makes a full /tmp an ordinary "no space left" error).
    size = []
    if spec.limits.memory_mb is not None and supports(exe, "--size"):
        size = ["--size", str(spec.limits.memory_mb * 1024 * 1024)]
    workload = list(spec.argv)
    if spec.image is not None:  # an OCI image's root instead of the host's
        from krate.sandbox import bwrap_image

        mounts, workload = bwrap_image.filesystem(spec, size, proc_args(empty, fds), empty, fds)
        args += mounts
    else:
        args += _host_filesystem(spec, size, empty, fds)
    fds.extend(spec.pass_fds)  # not consumed by bubblewrap: they reach the command as they are
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    argv = [ENV, DEFAULT_SIGNALS, "--", *workload] if terminal else workload
    return [*args, "--", *hold, *argv]


def proc_args(empty: Callable[[], int], fds: list[int]) -> list[str]:
    """A fresh /proc with the kernel's knobs read-only and its leak files masked."""
    args = ["--dev", "/dev", "--proc", "/proc"]
    for path in PROC_READ_ONLY:
        if path == "/proc/sys" or os.path.lexists(path):  # no /proc/sys: fail, never skip
            args += ["--ro-bind", path, path]
    for path in PROC_MASKED:
        if os.path.lexists(path):
            fd = empty()
            fds.append(fd)
            args += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    return args


def _host_filesystem(
    spec: SandboxSpec, size: list[str], empty: Callable[[], int], fds: list[int]
) -> list[str]:
    """The host's root read-only, with the policy's mounts on it."""
    args = ["--ro-bind", "/", "/", *proc_args(empty, fds)]
    args += [*size, "--tmpfs", spec.tmpdir]
    for folder in SOCKET_DIRS:
        if os.path.isdir(folder) and not os.path.islink(folder):
            args += [*size, "--tmpfs", folder]
    for kind, path in mount_order(spec):
        if spec.run_as is not None and not spec.run_as.reaches(path):
            continue  # bubblewrap runs as that user: neither it nor the workload can get there
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
        if bind.data is not None:
            # (a file under the private /tmp or /run is made: its folder first)
            fd = data_fd(bind.data)
            fds.append(fd)
            args += ["--dir", str(bind.dest.parent), "--perms", "0444"]
            args += ["--ro-bind-data", str(fd), str(bind.dest)]
            continue
        args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), str(bind.dest)]
    for dest, data in spec.data_files:
        fd = data_fd(data)
        fds.append(fd)
        args += ["--perms", "0444", "--ro-bind-data", str(fd), str(dest)]
    args += ["--chdir", str(spec.cwd)]
    return args


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
