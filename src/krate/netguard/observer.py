"""Watching krate from outside: strace's view of inet socket syscalls, and an empty netns.

The guard only sees Python; the kernel filter only refuses. `strace -f` follows
the whole process tree (C extensions, ctypes, children, code that ran before
krate's entry point) and `-yy` names each descriptor's protocol, so every inet
socket syscall can be classified: none, attempted and refused, created, or sent.
`bwrap --unshare-net` runs the command with only a loopback interface, which
enforces independently of krate's own lockdown (it shows nothing by itself).
Here only command lines are built and logs parsed; the proof runs them. Never
keeps the log: it can hold the bytes a command tried to send.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

TRACE = (
    "socket,connect,bind,sendto,sendmsg,sendmmsg,io_uring_setup,"
    "seccomp,landlock_restrict_self,execve"
)
INET_FAMILIES = ("AF_INET", "AF_INET6", "AF_PACKET")
_INET_FD = re.compile(
    r"^\d+<(TCP|UDP|TCPv6|UDPv6|RAW|RAWv6|UDPLITE|UDPLITEv6|PING|PINGv6|SCTP|SCTPv6|PACKET)\b"
)
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
# connect() outcomes after which a packet has left the process (a SYN went out).
_SENT_ERRNOS = {"EINPROGRESS", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "EALREADY", "EISCONN"}
_RANK = {"none": 0, "refused": 1, "created": 2, "sent": 3}
SEATBELT_NO_NETWORK = "(version 1)(allow default)(deny network*)"


@dataclass
class Attempt:
    pid: int
    program: str | None
    syscall: str
    family: str | None
    result: str  # refused / created / sent
    errno: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Observation:
    classification: str = "none"
    attempts: list[Attempt] = field(default_factory=list)
    lockdown_calls: int = 0
    processes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "classification": self.classification,
            "attempts": [a.to_dict() for a in self.attempts],
            "lockdown_calls": self.lockdown_calls,
            "processes": self.processes,
        }


def _joined_lines(text: str):
    """strace -f splits a syscall interrupted by another process; put it back together."""
    pending: dict[str, str] = {}
    for line in text.splitlines():
        if line.endswith(_UNFINISHED):
            pid = line.split(None, 1)[0]
            pending[pid] = line[: -len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(line)
        if resumed:
            pid, _, rest = resumed.groups()
            start = pending.pop(pid, None)
            if start is None:
                continue
            line = start + rest
        yield line


def classify(log: str, ignore: frozenset[int] | set[int] = frozenset()) -> Observation:
    """Every inet socket syscall in an `strace -f -yy -o` log, with what became of it.

    `ignore`: the threads of the workload's sandbox (its own network namespace), which a
    real `krate run` in the proof starts.
    """
    obs = Observation()
    programs: dict[int, str] = {}
    for line in _joined_lines(log):
        match = _LINE.match(line)
        if not match:
            continue
        pid_text, name, args, ret, tail = match.groups()
        pid = int(pid_text)
        if pid in ignore:
            continue
        errno = tail.split()[0] if ret == "-1" and tail.split() else None
        ok = ret not in ("-1", "?")
        if name == "execve":
            if ok:
                programs[pid] = args.split(",", 1)[0].strip('"')
                obs.processes += 1
            continue
        if name in ("seccomp", "landlock_restrict_self"):
            if ok and (name != "seccomp" or "SECCOMP_SET_MODE_FILTER" in args):
                obs.lockdown_calls += 1
            continue
        family = _family(name, args)
        if family is None:
            continue
        if name == "io_uring_setup":
            result = "sent" if ok else "refused"  # a ring could do I/O strace cannot see
        elif name == "socket":
            result = "created" if ok else "refused"
        elif name == "connect":
            result = "sent" if ok or errno in _SENT_ERRNOS else "refused"
        elif name == "bind":
            result = "created" if ok else "refused"
        else:  # sendto, sendmsg, sendmmsg
            result = "sent" if ok else "refused"
        obs.attempts.append(Attempt(pid, programs.get(pid), name, family, result, errno))
        if _RANK[result] > _RANK[obs.classification]:
            obs.classification = result
    return obs


def _family(name: str, args: str) -> str | None:
    if name == "io_uring_setup":
        return "io_uring"
    if name == "socket":
        first = args.split(",", 1)[0].strip()
        return first if first in INET_FAMILIES else None
    fd = _INET_FD.match(args.strip())
    if fd:
        return fd.group(1)
    family = re.search(r"sa_family=(AF_INET6?|AF_PACKET)\b", args)
    return family.group(1) if family else None


def find_strace() -> str | None:
    """strace, if installed and allowed to trace here (ptrace may be forbidden)."""
    exe = shutil.which("strace")
    if not exe:
        return None
    try:
        done = subprocess.run(
            [exe, "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if done.returncode == 0 else None


def find_bwrap() -> str | None:
    """bwrap, if installed and able to create an empty network namespace here."""
    exe = shutil.which("bwrap")
    if not exe:
        return None
    try:
        done = subprocess.run([exe, *netns_args(), "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if done.returncode == 0 else None


def netns_args() -> list[str]:
    return ["--unshare-net", "--die-with-parent", "--dev-bind", "/", "/", "--"]


def wrap(
    argv: list[str],
    *,
    strace: str | None,
    bwrap: str | None,
    log: str | None,
    trace: str = TRACE,
    strings: int = 0,
) -> list[str]:
    """`strace -f ... -- bwrap --unshare-net ... -- argv`, with whichever exist.

    `-q`, not `-qq`: process exits stay in the log (startup.py needs them).
    `strings`: how much of each string argument to show; 0 (no data) unless the
    programs' command lines are needed (a real run: which child is a helper).
    """
    cmd = list(argv)
    if bwrap:
        cmd = [bwrap, *netns_args(), *cmd]
    if strace and log:
        pidns = ["--pidns-translation"] if _translates_pidns(strace) else []
        cmd = [strace, "-f", "-q", *pidns, "-yy", "-s", str(strings), "-e", f"trace={trace}",
               "-o", log, "--", *cmd]  # fmt: skip
    return cmd


_PIDNS: dict[str, bool] = {}


def _translates_pidns(strace: str) -> bool:
    """strace >= 5.19 names a sandbox child's pid as strace sees it (startup.py needs it)."""
    if strace not in _PIDNS:
        try:
            done = subprocess.run(
                [strace, "--pidns-translation", "-o", "/dev/null", "true"],
                capture_output=True,
                timeout=30,
            )
            _PIDNS[strace] = done.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _PIDNS[strace] = False
    return _PIDNS[strace]


def seatbelt_wrap(argv: list[str], sandbox_exec: str) -> list[str]:
    """macOS: re-run under a deny-network Seatbelt profile (enforces; shows no attempts)."""
    return [sandbox_exec, "-p", SEATBELT_NO_NETWORK, *argv]
