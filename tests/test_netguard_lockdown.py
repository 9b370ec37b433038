"""The kernel lockdown: the filter's logic, and real processes refused by the real kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from krate.netguard import lockdown

from .bpf_support import run_bpf
from .conftest import run_krate

LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(not LINUX, reason="seccomp and Landlock exist only on Linux")
ALLOW = lockdown.SECCOMP_RET_ALLOW
EACCES = lockdown.SECCOMP_RET_ERRNO | 13
ENOSYS = lockdown.SECCOMP_RET_ERRNO | 38
I386 = 0x40000003


@pytest.mark.parametrize("arch", sorted(lockdown._ARCHES))
def test_filter_refuses_inet_sockets_io_uring_and_foreign_abis(arch):
    spec = lockdown._ARCHES[arch]
    prog = lockdown.seccomp_program(arch)
    native, sock = spec["audit_arch"], spec["socket"]
    assert run_bpf(prog, sock, native, 2) == EACCES  # AF_INET
    assert run_bpf(prog, sock, native, 10) == EACCES  # AF_INET6
    assert run_bpf(prog, sock, native, 17) == EACCES  # AF_PACKET
    assert run_bpf(prog, sock, native, 0xFFFFFFFF00000002) == EACCES  # high bits ignored by kernel
    assert run_bpf(prog, sock, native, 1) == ALLOW  # AF_UNIX
    assert run_bpf(prog, sock, native, 16) == ALLOW  # AF_NETLINK (bwrap sets up lo with it)
    assert run_bpf(prog, lockdown.NR_IO_URING_SETUP, native) == ENOSYS
    assert run_bpf(prog, 0, native) == ALLOW  # read
    assert run_bpf(prog, sock, I386, 2) == ENOSYS  # int 0x80 / compat ABI
    if spec["x32"]:
        assert run_bpf(prog, lockdown.X32_SYSCALL_BIT | sock, native, 2) == ENOSYS


def python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


@needs_linux
def test_locked_process_and_its_children_cannot_open_ip_sockets(listener):
    (host, port), accepted = listener
    result = python(
        f"""
        import ctypes, errno, json, socket, sqlite3, struct, subprocess, sys
        from krate.netguard import lockdown
        out = {{"before": lockdown.state()["enforced"], "applied": lockdown.apply()}}
        try:
            socket.create_connection(({host!r}, {port}), timeout=3)
            out["python"] = "connected"
        except OSError as exc:
            out["python"] = errno.errorcode[exc.errno]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        out["libc_socket"] = [libc.socket(2, 1, 0), errno.errorcode[ctypes.get_errno()]]
        out["libc_socket6"] = [libc.socket(10, 2, 0), errno.errorcode[ctypes.get_errno()]]
        params = ctypes.create_string_buffer(120)
        out["io_uring"] = [libc.syscall(425, 4, params), errno.errorcode[ctypes.get_errno()]]
        out["x32"] = [libc.syscall(0x40000000 | 39), errno.errorcode[ctypes.get_errno()]]
        child = subprocess.run(
            [sys.executable, "-I", "-S", "-c",
             "import socket; socket.create_connection(({host!r}, {port}), timeout=3)"],
            capture_output=True, text=True)
        out["child"] = child.stderr.strip().splitlines()[-1]
        shell = subprocess.run(["bash", "-c", "echo x > /dev/tcp/{host}/{port}"],
                               capture_output=True, text=True)
        out["bash"] = shell.returncode
        a, b = socket.socketpair()
        a.sendall(b"ok"); out["unix"] = b.recv(2).decode()
        out["sqlite"] = sqlite3.connect(":memory:").execute("select 1").fetchone()[0]
        out["localhost"] = bool(socket.getaddrinfo("localhost", 80))
        out["state"] = lockdown.state(run_probe=True)
        print(json.dumps(out))
        """
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["before"] is False
    assert out["applied"]["applied"] is True
    assert out["python"] == "EACCES"
    assert out["libc_socket"] == [-1, "EACCES"]
    assert out["libc_socket6"] == [-1, "EACCES"]
    assert out["io_uring"] == [-1, "ENOSYS"]
    assert out["x32"] == [-1, "ENOSYS"]
    assert "PermissionError" in out["child"]
    assert out["bash"] != 0
    assert out["unix"] == "ok" and out["sqlite"] == 1 and out["localhost"] is True
    state = out["state"]
    assert state["enforced"] is True and state["probe"] == {"result": "refused", "errno": "EACCES"}
    assert state["kernel"]["no_new_privs"] is True and state["kernel"]["seccomp"] == "filter"
    assert accepted == [], "a locked-down process reached the listener"


@needs_linux
def test_landlock_tcp_rules_are_added_where_the_kernel_has_them():
    result = python(
        "import json; from krate.netguard import lockdown; print(json.dumps(lockdown.apply()))"
    )
    applied = json.loads(result.stdout)
    abi = applied.get("landlock_abi")
    if abi is None or abi < 4:
        assert applied["mechanism"] == "seccomp"
        pytest.skip(f"this kernel has no Landlock network rules (ABI {abi})")
    assert applied["landlock"] == "applied" and applied["mechanism"] == "seccomp+landlock"


@needs_linux
def test_every_command_is_locked_at_entry_except_those_that_start_children_first():
    """Locked at entry; login/push/image pull after starting their transport; run/build hold
    imports."""
    code = """
        import json, sys
        from krate.cli import common, main
        main._protect(sys.argv[1:])
        from krate.netguard import lockdown
        started = common.take_transport()
        print(json.dumps([lockdown.state()["applied_here"], lockdown.imports_held(),
                          started is not None]))
        if started is not None:
            started.abandon()
    """
    locked, held, transport = [True, False, False], [False, True, False], [True, False, True]
    cases = {
        ("audit", "head"): locked,
        ("info",): locked,
        (): locked,
        ("run", "--", "npm", "install"): held,
        ("push", "dist/app.tar.gz", "ghcr.io/me/app:1"): transport,
        ("login", "ghcr.io"): transport,
        ("image", "pull", "ghcr.io/me/tools:1"): transport,
        ("image", "pull", "--platform", "linux/arm64", "ghcr.io/me/tools:1"): transport,
        ("image", "pull", "--help"): locked,
        ("image", "--help"): locked,
        ("image",): locked,
        ("login", "--help"): locked,
        ("build", "--", "make", "--help"): held,  # the workload's --help, not krate's
        ("run", "--help"): locked,  # help needs no children
        ("build", "-h"): locked,
        ("run", "npm", "-h"): held,  # npm's -h: run keeps no interspersed options
        ("run", "--allow-host", "x.example", "--", "curl", "--help"): held,
        ("run", "--allow-host=x.example", "-v", "make"): held,
        ("run", "--bogus", "--", "true"): locked,  # Typer explains it, locked
        ("--help",): locked,
    }
    for args, expected in cases.items():
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True
        )
        assert json.loads(result.stdout) == expected, (args, result.stderr)


@needs_linux
def test_krate_info_reports_the_lockdown_read_back_from_the_kernel():
    result = run_krate("info", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["telemetry"] == "none"
    assert facts["network_guard"] == "installed"
    assert facts["lockdown"]["enforced"] is True
    assert facts["lockdown"]["kernel"]["seccomp"] == "filter"
    text = run_krate("info").stdout
    assert "network lockdown  in force (seccomp" in text


# A filter that makes prctl and seccomp fail, as on a kernel (or container) without them.
NO_SECCOMP_LAUNCHER = """
import ctypes, os, struct, sys
from krate.netguard import lockdown
spec = lockdown._ARCHES[lockdown._arch()]
prog = [
    (0x20, 0, 0, 0),
    (0x15, 0, 1, spec["seccomp"]),
    (0x06, 0, 0, lockdown.SECCOMP_RET_ERRNO | 38),
    (0x06, 0, 0, lockdown.SECCOMP_RET_ALLOW),
]
raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
buf = ctypes.create_string_buffer(raw, len(raw))
class F(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
f = F(len(prog), ctypes.cast(buf, ctypes.c_void_p))
assert libc.prctl(22, 2, ctypes.byref(f), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


@needs_linux
def test_krate_still_runs_where_the_kernel_offers_no_lockdown_and_says_so():
    from .conftest import KRATE

    result = subprocess.run(
        [sys.executable, "-c", NO_SECCOMP_LAUNCHER, KRATE, "info", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lock = json.loads(result.stdout)["lockdown"]
    assert lock["enforced"] is False and lock["applied_here"] is False
    assert "seccomp" in lock["reason"] and "ENOSYS" in lock["reason"]
    text = subprocess.run(
        [sys.executable, "-c", NO_SECCOMP_LAUNCHER, KRATE, "audit", "network"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert "lockdown of this process: NOT in force (seccomp" in text.stdout
    assert "ENOSYS" in text.stdout


@pytest.mark.skipif(sys.platform != "darwin", reason="sandbox_init exists only on macOS")
def test_macos_no_network_profile_refuses_sockets():  # pragma: no cover - needs a Mac
    result = python(
        "import json; from krate.netguard import lockdown; lockdown.apply(); "
        "print(json.dumps(lockdown.state(run_probe=True)))"
    )
    state = json.loads(result.stdout)
    assert state["applied_here"] is True and state["enforced"] is True


def test_version_fast_path_loads_no_lockdown():
    code = (
        "import sys; sys.argv = ['krate', '--version']; "
        "from krate.cli.main import main; main(); "
        "print('krate.netguard' in sys.modules, 'ctypes' in sys.modules)"
    )
    out = python(code)
    assert out.stdout.splitlines()[-1] == "False False"


def test_in_process_main_never_locks_the_calling_process(cli):
    assert cli("audit", "head").code == 0
    assert lockdown._applied is None
    with open("/proc/self/status") if LINUX else open(os.devnull) as fh:
        assert "Seccomp:\t2" not in fh.read()
