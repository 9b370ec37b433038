"""A fresh kernel session keyring for the workload (Linux).

A process inherits its session keyring across fork, exec and new user namespaces,
so keys the caller added (`keyctl add ... @s`, Kerberos KEYRING caches, fscrypt v1
keys) would be in reach of the workload. Just before it starts bubblewrap, krate
joins a new anonymous session keyring, which the sandbox inherits: nothing in it,
not even the kernel acting for it (fscrypt, NFS or CIFS key lookups), finds the
caller's keys. The seccomp filter (seccomp.py) also refuses `keyctl`, `add_key` and
`request_key`, and the sandbox's `/proc/keys` and `/proc/key-users` (which list the
descriptions of every key the user owns) are hidden (`PROC_FILES`).

krate joins in its own process, not in the launcher child: a `preexec_fn` makes
Python fork instead of vfork and run code in the child, which cost 6-7 ms per run
here. krate has no use for the caller's keys after that point (`run` and `build`
never touch credentials), and the keyring it shares with the workload stays empty.

macOS has no kernel keyrings (its keychain is a service, which Seatbelt refuses).
Written with ctypes: the standard library has no keyctl, and ctypes is loaded on the
run path anyway (the lockdown).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from krate.errors import EXIT_KRATE_FAILED, KrateError

KEYCTL_JOIN_SESSION_KEYRING = 1
ENOSYS = 38
NR_KEYCTL = {"x86_64": 250, "aarch64": 219}
PROC_FILES = ("/proc/keys", "/proc/key-users")


def _keyctl_join() -> tuple[int, int] | None:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): (result, errno); None on an unknown CPU."""
    import ctypes

    from krate.netguard.lockdown import _arch

    nr = NR_KEYCTL.get(_arch())
    if nr is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    rc = syscall(ctypes.c_long(nr), ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), None)
    return rc, ctypes.get_errno()


def join_new_session(
    platform: str = sys.platform, call: Callable[[], tuple[int, int] | None] = _keyctl_join
) -> bool:
    """Give this thread, and every process it starts, a new empty session keyring.

    False where there are no kernel keyrings (macOS, a kernel without them) or no
    system call number for this CPU. Raises KrateError (125) when the kernel refused.
    """
    if not platform.startswith("linux"):
        return False
    result = call()
    if result is None:
        return False
    rc, errno = result
    if rc >= 0:
        return True
    if errno == ENOSYS:
        return False
    import os

    raise KrateError(
        f"cannot give the workload a fresh kernel session keyring: {os.strerror(errno)} "
        "(is your key quota full? see `cat /proc/key-users`)",
        exit_code=EXIT_KRATE_FAILED,
    )
