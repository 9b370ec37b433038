"""The workload's seccomp filter (Linux): refuse what the sandbox's namespaces do not isolate.

bubblewrap installs it (`--seccomp FD`, a compiled classic-BPF program read from a
pipe) just before it starts the command, so it covers the workload and everything it
starts, on top of the namespaces:

- `keyctl`, `add_key`, `request_key`: EPERM. Kernel keyrings are not namespaced; the
  launcher also gives the workload a fresh session keyring (keyrings.py).
- `socket(AF_VSOCK)`: EACCES. vsock reaches the hypervisor or the host's virtual
  machines whatever the network namespace (Docker Desktop, Colima, WSL and cloud
  agents listen there). `AF_BLUETOOTH` too: the kernel already refuses it outside the
  initial network namespace; refused here so that does not depend on a kernel detail.
  `AF_ALG` (the kernel's crypto API) stays allowed: it reaches nothing outside the
  sandbox, and a few tools use it.
- `io_uring_setup`: ENOSYS, as for krate itself: IORING_OP_SOCKET creates sockets
  without `socket()`, past the rule above. Programs fall back to ordinary calls.
- `ioctl(TIOCSTI)`, `ioctl(TIOCLINUX)`: EPERM, terminal injection (defence in depth:
  the workload also runs in a new session). More `Refusal`s can be added, e.g. by a
  mode that keeps the terminal.
- Foreign ABIs (x32, i386 `int 0x80`, arm32 compat): ENOSYS, or every rule above could
  be dodged through another syscall table. 32-bit x86 programs cannot run inside.

Arguments are compared on their low 32 bits: the kernel reads a family and an ioctl
request as 32-bit ints, so high bits cannot smuggle a value past the filter.
Everything else is allowed. The opcodes, the label resolver and the byte layout are
the lockdown's (netguard/lockdown.py), which has no seccomp library either.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

from krate.netguard.lockdown import (
    _ARCHES,
    NR_IO_URING_SETUP,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    X32_SYSCALL_BIT,
    _arch,
    assemble,
    pack,
)

EPERM, EACCES, ENOSYS = 1, 13, 38
AF_BLUETOOTH, AF_VSOCK = 31, 40
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

# Syscall numbers (x86_64: arch/x86/entry/syscalls; aarch64: asm-generic/unistd.h).
SYSCALLS = {
    "x86_64": {"ioctl": 16, "socket": 41, "add_key": 248, "request_key": 249, "keyctl": 250},
    "aarch64": {"ioctl": 29, "socket": 198, "add_key": 217, "request_key": 218, "keyctl": 219},
}
for _numbers in SYSCALLS.values():
    _numbers["io_uring_setup"] = NR_IO_URING_SETUP

# classic BPF opcodes, and where seccomp_data keeps things
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_NR, _ARCH, _ARGS = 0, 4, 16


class Refusal(tuple):
    """`syscall` fails with `errno`: always, or when argument `arg` is one of `values`.

    `names` label the values in the run record (`socket(AF_VSOCK)`). A plain tuple
    subclass, not a NamedTuple: building a NamedTuple class costs 0.2 ms of every run.
    """

    __slots__ = ()

    def __new__(
        cls,
        syscall: str,
        errno: int,
        arg: int | None = None,
        values: tuple[int, ...] = (),
        names: tuple[str, ...] = (),
    ) -> Refusal:
        return tuple.__new__(cls, (syscall, errno, arg, values, names))

    syscall = property(lambda self: self[0])
    errno = property(lambda self: self[1])
    arg = property(lambda self: self[2])
    values = property(lambda self: self[3])
    names = property(lambda self: self[4])

    def labels(self) -> list[str]:
        if self.arg is None:
            return [self.syscall]
        return [f"{self.syscall}({name})" for name in self.names]


WORKLOAD: tuple[Refusal, ...] = (
    Refusal("keyctl", EPERM),
    Refusal("add_key", EPERM),
    Refusal("request_key", EPERM),
    Refusal("socket", EACCES, 0, (AF_VSOCK, AF_BLUETOOTH), ("AF_VSOCK", "AF_BLUETOOTH")),
    Refusal("io_uring_setup", ENOSYS),
    Refusal("ioctl", EPERM, 1, (TIOCSTI, TIOCLINUX), ("TIOCSTI", "TIOCLINUX")),
)


def supported(arch: str | None = None) -> bool:
    return (arch or _arch()) in SYSCALLS


def describe(rules: Iterable[Refusal] = WORKLOAD) -> list[str]:
    """What the filter refuses, for the run record: `keyctl`, `socket(AF_VSOCK)`, ..."""
    return [label for rule in rules for label in rule.labels()]


def program(arch: str, rules: Iterable[Refusal] = WORKLOAD) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) tuples; pure so tests can read it."""
    numbers, native = SYSCALLS[arch], _ARCHES[arch]
    groups: dict[str, list[Refusal]] = {}
    for rule in rules:
        groups.setdefault(rule.syscall, []).append(rule)
    prog: list[tuple] = []
    labels: dict[str, int] = {}

    def op(code, k, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(_LD_W_ABS, _ARCH)
    op(_JEQ_K, native["audit_arch"], 0, "enosys")
    op(_LD_W_ABS, _NR)
    if native["x32"]:
        op(_JGE_K, X32_SYSCALL_BIT, "enosys", 0)
    for name in groups:
        op(_JEQ_K, numbers[name], f"sys:{name}", 0)
    op(_RET_K, SECCOMP_RET_ALLOW)
    errnos: set[int] = set()
    for name, group in groups.items():
        labels[f"sys:{name}"] = len(prog)
        loaded = None
        for rule in group:
            if rule.arg is None:  # the whole call: later rules for it cannot matter
                op(_RET_K, SECCOMP_RET_ERRNO | rule.errno)
                break
            if loaded != rule.arg:
                op(_LD_W_ABS, _ARGS + 8 * rule.arg)  # the low 32 bits (little-endian)
                loaded = rule.arg
            for value in rule.values:
                op(_JEQ_K, value & 0xFFFFFFFF, f"errno:{rule.errno}", 0)
            errnos.add(rule.errno)
        else:
            op(_RET_K, SECCOMP_RET_ALLOW)
    for errno in sorted(errnos):
        labels[f"errno:{errno}"] = len(prog)
        op(_RET_K, SECCOMP_RET_ERRNO | errno)
    labels["enosys"] = len(prog)
    op(_RET_K, SECCOMP_RET_ERRNO | ENOSYS)
    return assemble(prog, labels)


@functools.cache
def _compiled(arch: str, rules: tuple[Refusal, ...]) -> bytes:
    return pack(program(arch, rules))


def pipe_fd(arch: str | None = None, rules: tuple[Refusal, ...] = WORKLOAD) -> int | None:
    """A descriptor from which bubblewrap reads the compiled filter; None: no filter for `arch`.

    A pipe holds the whole program (a few hundred bytes, far below the pipe's buffer),
    so the write end is closed before bubblewrap reads.
    """
    arch = arch or _arch()
    if arch not in SYSCALLS:
        return None
    data = _compiled(arch, rules)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd
