"""Ask the kernel to refuse IP sockets to this process and everything it starts.

Linux: `PR_SET_NO_NEW_PRIVS`, then a seccomp BPF filter installed with
`SECCOMP_FILTER_FLAG_TSYNC` (every thread): `socket()` for AF_INET, AF_INET6 and
AF_PACKET fails with EACCES, `io_uring_setup` and foreign syscall ABIs (x32,
i386 `int 0x80`) with ENOSYS, everything else is allowed. Where Landlock has
network rules (ABI >= 4) a ruleset that handles TCP bind/connect with no allow
rule is added on top. macOS: the named `no-network` profile of `sandbox_init`
(unverified here: nothing in this repository runs on a Mac yet).

Written with ctypes rather than a library because the standard library has no
seccomp binding and the packages that do (pyseccomp, python-prctl) need a C
toolchain or libseccomp; the whole filter is 15 instructions.

This module must never fail a command: where the kernel offers nothing, `apply()`
returns a state that says why and krate carries on (and says so in `krate info`
and the proof). It never imports a networking module; its probe calls libc's
`socket()` directly and only when a lockdown is believed to be in force.
"""

from __future__ import annotations

import os
import struct
import sys
from _thread import allocate_lock

TYPE_CHECKING = False  # not `from typing import ...`: this loads before every command
if TYPE_CHECKING:
    from typing import Any

# Top-level commands that must start unlocked children first (the workload sandbox,
# the egress proxy, the registry transport). They call `apply()` themselves right
# after spawning them. Every other command is locked down at CLI entry.
DEFERRED_COMMANDS: dict[str, str] = {
    "run": "starts the workload sandbox and, when the policy allows hosts, the egress proxy",
    "build": "starts the workload sandbox and, when the policy allows hosts, the egress proxy",
    "login": "starts the registry transport helper, which checks the credentials",
    "push": "starts the registry transport helper, which uploads the artifact",
    "image pull": "starts the registry transport helper, which downloads the image",
}


def deferred_purpose(path) -> str | None:
    """Why the command `path` (its names, e.g. ("image", "pull")) starts children first."""
    words = tuple(path)
    return DEFERRED_COMMANDS.get(" ".join(words[:2])) or DEFERRED_COMMANDS.get(
        words[0] if words else ""
    )


# Linux constants (include/uapi/linux/*.h).
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AF_INET, AF_INET6, AF_PACKET = 2, 10, 17
EACCES, ENOSYS = 13, 38
X32_SYSCALL_BIT = 0x40000000
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_ACCESS_NET_BIND_TCP = 1
LANDLOCK_ACCESS_NET_CONNECT_TCP = 2
# Syscall numbers per architecture; the landlock and io_uring numbers are shared.
_ARCHES = {
    "x86_64": {"audit_arch": 0xC000003E, "socket": 41, "seccomp": 317, "x32": True},
    "aarch64": {"audit_arch": 0xC00000B7, "socket": 198, "seccomp": 277, "x32": False},
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
NR_IO_URING_SETUP = 425
NR_LANDLOCK_CREATE_RULESET = 444
NR_LANDLOCK_RESTRICT_SELF = 446

# BPF opcodes.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_applied: dict[str, Any] | None = None
_lock = allocate_lock()


def _arch() -> str:
    machine = os.uname().machine.lower()
    return _ARCH_ALIASES.get(machine, machine)


def seccomp_program(arch: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) tuples; pure so tests can read it."""
    spec = _ARCHES[arch]
    prog: list[tuple] = []
    labels: dict[str, int] = {}

    def op(code, k, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(_LD_W_ABS, 4)  # seccomp_data.arch
    op(_JEQ_K, spec["audit_arch"], 0, "enosys")
    op(_LD_W_ABS, 0)  # seccomp_data.nr
    if spec["x32"]:
        op(_JGE_K, X32_SYSCALL_BIT, "enosys", 0)
    op(_JEQ_K, spec["socket"], "socket", 0)
    op(_JEQ_K, NR_IO_URING_SETUP, "enosys", 0)
    op(_RET_K, SECCOMP_RET_ALLOW)
    labels["socket"] = len(prog)
    op(_LD_W_ABS, 16)  # low 32 bits of args[0] (little-endian): the kernel reads an int
    for family in (AF_INET, AF_INET6, AF_PACKET):
        op(_JEQ_K, family, "eacces", 0)
    op(_RET_K, SECCOMP_RET_ALLOW)
    labels["eacces"] = len(prog)
    op(_RET_K, SECCOMP_RET_ERRNO | EACCES)
    labels["enosys"] = len(prog)
    op(_RET_K, SECCOMP_RET_ERRNO | ENOSYS)
    return assemble(prog, labels)


def assemble(prog: list[tuple], labels: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """Named jump targets (labels: instruction index) as the relative offsets BPF jumps take.

    Shared with the workload's filter (sandbox/seccomp.py).
    """
    resolved = []
    for index, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - index - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - index - 1 if isinstance(jf, str) else jf
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"BPF jump out of range at instruction {index}")
        resolved.append((code, jt, jf, k))
    return resolved


def pack(program: list[tuple[int, int, int, int]]) -> bytes:
    """The program as the kernel (and bubblewrap's --seccomp) reads it: struct sock_filter[]."""
    return b"".join(struct.pack("=HBBI", *ins) for ins in program)


class ImportsHeld(ImportError):
    """A third-party import before the lockdown of a deferred command: a bug in krate."""


class _Gate:
    """A meta-path finder that lets only krate and the standard library load before the lockdown.

    Installed by `hold_imports()` for the commands that defer their lockdown until
    their sandbox or helpers exist: until `apply()`, no third-party package can even
    be imported there, so none of its code runs with network access. Standard
    modules are looked up in the standard library folders only (a `pathlib.py`
    planted in site-packages is never found); submodules follow their package.
    """

    def __init__(self, stdlib: list[str], path_finder: Any) -> None:
        self.stdlib, self.path_finder = stdlib, path_finder

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or name == "krate":
            return None  # a submodule of an admitted package, or krate itself: normal lookup
        if name in sys.stdlib_module_names:
            spec = self.path_finder.find_spec(name, self.stdlib)
            if spec is None:  # not in this build (msvcrt on Linux): as Python says it
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return spec
        raise ImportsHeld(
            f"{name} was imported before krate's network lockdown; only the standard library "
            "and krate may load before it (a bug: please report it)"
        )


_gate: _Gate | None = None


def _stdlib_dirs() -> list[str]:
    """The standard library's folders on sys.path (never a site-packages folder)."""
    base = getattr(sys, "_stdlib_dir", None) or os.path.dirname(os.__file__)
    found = []
    for entry in sys.path:
        parts = entry.split(os.sep)
        if "site-packages" in parts or "dist-packages" in parts:
            continue
        if entry == base or entry.startswith(base + os.sep) or entry.endswith(".zip"):
            found.append(entry)
    return found


def hold_imports() -> None:
    """Until `apply()`: nothing but krate and the standard library may be imported."""
    global _gate
    with _lock:
        if _applied is not None or _gate is not None:
            return
        # After the built-in and frozen importers, before the path finder.
        index = next(
            (i for i, f in enumerate(sys.meta_path) if getattr(f, "__name__", "") == "PathFinder"),
            None,
        )
        if index is None:
            return  # not CPython's usual import system: nothing to hold with
        _gate = _Gate(_stdlib_dirs(), sys.meta_path[index])
        sys.meta_path.insert(index, _gate)


def imports_held() -> bool:
    """True while a deferred command has not locked down yet (third-party imports refused)."""
    return _gate is not None


def _release_imports() -> None:
    global _gate
    if _gate is not None:
        if _gate in sys.meta_path:
            sys.meta_path.remove(_gate)
        _gate = None


def applied() -> bool:
    """Whether `apply()` has run in this process (whatever it achieved)."""
    return _applied is not None


def apply() -> dict[str, Any]:
    """Lock this process (and its future children) out of IP sockets; idempotent.

    Returns what was applied, or why nothing could be; never raises. Third-party
    imports held by `hold_imports()` are let through once the lockdown is in place.
    """
    global _applied
    with _lock:
        if _applied is not None:
            return dict(_applied)
        try:
            if sys.platform.startswith("linux"):
                _applied = _apply_linux()
            elif sys.platform == "darwin":
                _applied = _apply_macos()
            else:
                _applied = {"applied": False, "reason": f"no lockdown for {sys.platform}"}
        except Exception as exc:  # a lockdown failure must never stop krate
            _applied = {"applied": False, "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            _release_imports()
        return dict(_applied)


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _apply_linux() -> dict[str, Any]:
    arch = _arch()
    if arch not in _ARCHES:
        return {"applied": False, "mechanism": None, "reason": f"no seccomp filter for {arch}"}
    ctypes, libc = _libc()
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return _fail(ctypes, "prctl(PR_SET_NO_NEW_PRIVS)")

    program = seccomp_program(arch)
    raw = pack(program)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.cast(buf, ctypes.c_void_p))
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(
        ctypes.c_long(_ARCHES[arch]["seccomp"]),
        ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if rc != 0:
        # rc > 0 names a thread that could not be synchronised.
        return (
            _fail(ctypes, "seccomp(SET_MODE_FILTER, TSYNC)")
            if rc < 0
            else {
                "applied": False,
                "mechanism": None,
                "reason": f"seccomp TSYNC failed on thread {rc}",
            }
        )
    result: dict[str, Any] = {"applied": True, "mechanism": "seccomp", "reason": None}
    result.update(_landlock(ctypes, libc))
    if result["landlock"] == "applied":
        result["mechanism"] = "seccomp+landlock"
    return result


def _landlock(ctypes, libc) -> dict[str, Any]:
    """Landlock TCP rules on top of seccomp where the kernel has them (ABI >= 4)."""
    abi = libc.syscall(
        ctypes.c_long(NR_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint(LANDLOCK_CREATE_RULESET_VERSION),
    )
    if abi < 0:
        return {"landlock_abi": None, "landlock": "not offered by this kernel"}
    if abi < 4:
        return {"landlock_abi": abi, "landlock": "no network rules before ABI 4"}
    attr = struct.pack("=QQ", 0, LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(
        ctypes.c_long(NR_LANDLOCK_CREATE_RULESET),
        attr_buf,
        ctypes.c_size_t(len(attr)),
        ctypes.c_uint(0),
    )
    if fd < 0:
        return {
            "landlock_abi": abi,
            "landlock": f"ruleset refused: {_errno_name(ctypes.get_errno())}",
        }
    try:
        rc = libc.syscall(
            ctypes.c_long(NR_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint(0)
        )
    finally:
        os.close(fd)
    if rc != 0:
        return {
            "landlock_abi": abi,
            "landlock": f"restrict_self refused: {_errno_name(ctypes.get_errno())}",
        }
    threading = sys.modules.get("threading")  # never imported means no other Python thread
    alone = threading is None or threading.active_count() == 1
    scope = "applied" if alone else "applied (calling thread only)"
    return {"landlock_abi": abi, "landlock": scope}


def _apply_macos() -> dict[str, Any]:
    """The named no-network Seatbelt profile; cannot be undone, inherited by children."""
    ctypes, _ = _libc()
    lib = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    lib.sandbox_init.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(ctypes.c_char_p)]
    lib.sandbox_init.restype = ctypes.c_int
    error = ctypes.c_char_p()
    sandbox_named = 0x0001
    if lib.sandbox_init(b"no-network", sandbox_named, ctypes.byref(error)) != 0:
        reason = error.value.decode(errors="replace") if error.value else "sandbox_init failed"
        lib.sandbox_free_error(error)
        return {"applied": False, "mechanism": None, "reason": reason}
    return {"applied": True, "mechanism": "sandbox_init no-network", "reason": None}


def _fail(ctypes, what: str) -> dict[str, Any]:
    return {
        "applied": False,
        "mechanism": None,
        "reason": f"{what}: {_errno_name(ctypes.get_errno())}",
    }


def _errno_name(number: int) -> str:
    import errno

    return errno.errorcode.get(number, str(number))


def kernel_status(path: str = "/proc/self/status") -> dict[str, Any]:
    """NoNewPrivs and Seccomp as the kernel reports them (Linux); {} elsewhere."""
    fields = {
        "NoNewPrivs": "no_new_privs",
        "Seccomp": "seccomp",
        "Seccomp_filters": "seccomp_filters",
    }
    found: dict[str, Any] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in fields:
                    found[fields[key]] = int(value.strip() or 0)
    except OSError:
        return {}
    mode = found.get("seccomp")
    if mode is not None:
        found["seccomp"] = {0: "disabled", 1: "strict", 2: "filter"}.get(mode, str(mode))
    if "no_new_privs" in found:
        found["no_new_privs"] = bool(found["no_new_privs"])
    return found


def probe() -> dict[str, Any]:
    """Try to create an IPv4 socket through libc (no Python audit event, no guard).

    Refused means the kernel enforces the lockdown. Only the socket is created,
    never connected; it is closed at once if the kernel allowed it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    sock_dgram = 2
    fd = libc.socket(AF_INET, sock_dgram, 0)
    if fd < 0:
        return {"result": "refused", "errno": _errno_name(ctypes.get_errno())}
    if sys.platform != "darwin":
        os.close(fd)
        return {"result": "allowed", "errno": None}
    # Seatbelt may allow the socket and deny its use: try the loopback discard port
    # (sockaddr_in with BSD's sin_len byte). Unverified until a Mac runs it.
    addr = struct.pack("=BBH4s8x", 16, AF_INET, 9 << 8, bytes([127, 0, 0, 1]))
    rc = libc.connect(fd, addr, len(addr))
    err = ctypes.get_errno()
    os.close(fd)
    if rc != 0 and _errno_name(err) in ("EPERM", "EACCES"):
        return {"result": "refused", "errno": _errno_name(err)}
    return {"result": "allowed", "errno": None}


def state(*, run_probe: bool = False) -> dict[str, Any]:
    """The lockdown of this very process, read back from the kernel where it can be.

    Without `run_probe`, `enforced` means: krate applied its filter and the kernel
    reports a seccomp filter in force. The probe (the proof runs it) makes a real
    socket() call, which an outside observer would see, so `krate info` and
    `krate audit network` do not run it.
    """
    applied = dict(_applied) if _applied is not None else None
    info: dict[str, Any] = {
        "platform": sys.platform,
        "applied_here": bool(applied and applied.get("applied")),
        "mechanism": applied.get("mechanism") if applied else None,
        "reason": applied.get("reason") if applied else "not applied in this process",
    }
    if applied:
        for key in ("landlock", "landlock_abi"):
            if key in applied:
                info[key] = applied[key]
    if sys.platform.startswith("linux"):
        info["kernel"] = kernel_status()
        locked = info["kernel"].get("seccomp") == "filter"
    else:
        info["kernel"] = {}
        locked = info["applied_here"]
    if locked and run_probe:
        try:
            info["probe"] = probe()
        except Exception as exc:  # pragma: no cover - ctypes missing
            info["probe"] = {"result": "unavailable", "errno": None, "reason": str(exc)}
        info["enforced"] = info["probe"]["result"] == "refused"
    else:
        info["probe"] = {"result": "not run", "errno": None}
        info["enforced"] = locked and info["applied_here"]
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for humans: what the kernel enforces for this process."""
    kernel = info.get("kernel") or {}
    if info.get("enforced"):
        parts = [info.get("mechanism") or "inherited filter"]
        if kernel:
            parts.append(
                f"kernel reports NoNewPrivs {int(bool(kernel.get('no_new_privs')))}, "
                f"Seccomp {kernel.get('seccomp')}"
            )
        probe = info.get("probe") or {}
        if probe.get("result") == "refused":
            parts.append(f"IPv4 socket probe refused: {probe.get('errno')}")
        if info.get("landlock") and info.get("mechanism") != "seccomp+landlock":
            parts.append(f"landlock: {info['landlock']}")
        return f"in force ({'; '.join(parts)})"
    text = f"NOT in force ({info.get('reason') or 'unknown'})"
    if kernel.get("seccomp") == "filter":
        text += "; the kernel reports a seccomp filter krate did not install"
    return text
