"""When a process started: what tells a live krate from a reused pid (stale runs and folders).

Linux: field 22 of /proc/PID/stat (clock ticks since boot). macOS has no /proc:
`sysctl` kern.proc.pid.PID returns a `struct kinfo_proc` whose first member,
kp_proc.p_un.__p_starttime, is a `struct timeval`; it is read with ctypes (already
loaded on the run path by the lockdown, and no subprocess per run). Anywhere else,
or when that fails: `ps -o lstart= -p PID` (POSIX ps, second resolution).

An identity is compared only with one made on the same machine, so the three forms
never meet. None: the process does not exist (or nothing can tell).
"""

from __future__ import annotations

import os
import sys

PROC = "/proc"
CTL_KERN, KERN_PROC, KERN_PROC_PID = 1, 14, 1
KINFO_PROC_SIZE = 648  # sizeof(struct kinfo_proc) on 64-bit macOS
PS_FOLDERS = "/bin:/usr/bin"


def identity(pid: int, platform: str = sys.platform) -> str | None:
    """Something that changes when `pid` is reused: the process's start time."""
    if os.path.isdir(PROC):
        return _from_proc(pid)
    if platform == "darwin":
        found = _from_sysctl(pid)
        if found is not None:
            return found
    return _from_ps(pid)


def _from_proc(pid: int) -> str | None:
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def from_kinfo(buffer: bytes) -> str | None:
    """The start time in a `struct kinfo_proc` as "seconds.microseconds"; None: no process."""
    import struct

    if len(buffer) < 12:
        return None
    seconds, micros = struct.unpack_from("=qi", buffer, 0)
    if seconds <= 0:
        return None
    return f"{seconds}.{micros:06d}"


def _from_sysctl(pid: int) -> str | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        mib = (ctypes.c_int * 4)(CTL_KERN, KERN_PROC, KERN_PROC_PID, pid)
        buffer = ctypes.create_string_buffer(KINFO_PROC_SIZE * 2)
        size = ctypes.c_size_t(len(buffer))
        if libc.sysctl(mib, 4, buffer, ctypes.byref(size), None, 0) != 0:
            return None
        return from_kinfo(buffer.raw[: size.value])
    except (OSError, AttributeError, ValueError):
        return None


def _from_ps(pid: int) -> str | None:
    import shutil
    import subprocess

    ps = shutil.which("ps", path=PS_FOLDERS)
    if ps is None:
        return None
    try:
        done = subprocess.run(
            [ps, "-o", "lstart=", "-p", str(pid)],
            capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
            env={"PATH": PS_FOLDERS, "LC_ALL": "C", "TZ": "UTC"},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    return "-".join(words) if done.returncode == 0 and words else None
