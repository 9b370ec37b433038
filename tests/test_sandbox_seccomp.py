"""The workload's seccomp filter and the fresh session keyring.

The filter is read as data here (a small classic-BPF interpreter); the sandbox tests
(test_run_sockets_keyrings.py) check the real kernel refuses the same calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from krate.netguard import lockdown
from krate.sandbox import seccomp
from krate.sandbox.seccomp import Refusal
from tests.bpf_support import run_bpf

ALLOW = lockdown.SECCOMP_RET_ALLOW
ERRNO = lockdown.SECCOMP_RET_ERRNO
EPERM, EACCES, ENOSYS = ERRNO | 1, ERRNO | 13, ERRNO | 38
I386, ARM32 = 0x40000003, 0x40000028


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_filter_refuses_keyrings_vsock_io_uring_and_terminal_injection(arch):
    nr, native = seccomp.SYSCALLS[arch], lockdown._ARCHES[arch]["audit_arch"]
    prog = seccomp.program(arch)
    for name in ("keyctl", "add_key", "request_key"):
        assert run_bpf(prog, nr[name], native) == EPERM, name
    for family in (40, 31, 0xFFFFFFFF_00000028):  # AF_VSOCK, AF_BLUETOOTH, high bits ignored
        assert run_bpf(prog, nr["socket"], native, family, 1, 0) == EACCES, family
    for family in (1, 2, 10, 16, 38):  # unix, inet, inet6, netlink, alg: the workload's own
        assert run_bpf(prog, nr["socket"], native, family, 1, 0) == ALLOW, family
    for request in (0x5412, 0x541C, 0x1_0000_5412):  # TIOCSTI, TIOCLINUX, high bits ignored
        assert run_bpf(prog, nr["ioctl"], native, 0, request) == EPERM, hex(request)
    assert run_bpf(prog, nr["ioctl"], native, 0x5412, 0x541B) == ALLOW  # FIONREAD; fd irrelevant
    assert run_bpf(prog, nr["io_uring_setup"], native) == ENOSYS
    assert run_bpf(prog, 0, native) == ALLOW and run_bpf(prog, 63, native) == ALLOW
    foreign = I386 if arch == "x86_64" else ARM32
    assert run_bpf(prog, 250, foreign) == ENOSYS  # another syscall table: nothing passes
    if lockdown._ARCHES[arch]["x32"]:
        assert run_bpf(prog, lockdown.X32_SYSCALL_BIT | 0, native) == ENOSYS


def test_more_refusals_join_the_same_call():
    """How a later mode (an interactive terminal) adds ioctl requests to refuse."""
    rules = (*seccomp.WORKLOAD, Refusal("ioctl", EPERM & 0xFFFF, 1, (0x5437,), ("TIOCSETD",)))
    prog = seccomp.program("x86_64", rules)
    native = lockdown._ARCHES["x86_64"]["audit_arch"]
    assert run_bpf(prog, 16, native, 0, 0x5437) == EPERM
    assert run_bpf(prog, 16, native, 0, 0x5412) == EPERM
    assert run_bpf(prog, 16, native, 0, 0x5413) == ALLOW
    assert "ioctl(TIOCSETD)" in seccomp.describe(rules)


def test_record_labels_and_the_bytes_bubblewrap_reads():
    assert seccomp.describe() == [
        "keyctl", "add_key", "request_key", "socket(AF_VSOCK)", "socket(AF_BLUETOOTH)",
        "io_uring_setup", "ioctl(TIOCSTI)", "ioctl(TIOCLINUX)",
    ]  # fmt: skip
    assert seccomp.pipe_fd("riscv64") is None and not seccomp.supported("riscv64")
    fd = seccomp.pipe_fd("x86_64")
    with os.fdopen(fd, "rb") as f:
        data = f.read()  # the write end is closed already: this ends
    assert data == lockdown.pack(seccomp.program("x86_64")) and len(data) % 8 == 0


# The fresh session keyring, against the real kernel, as the bubblewrap backend sets it up:
# its launcher starts a stand-in `bwrap` that runs the probe as the workload.
KEYRING_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, platform, subprocess, sys
    from pathlib import Path
    from krate.sandbox import backend
    from krate.sandbox.spec import build

    ADD, CTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    assert libc.syscall(CTL, 1, None) > 0  # this script's own session keyring
    key = libc.syscall(ADD, b"user", b"krate-unit-key", b"v", 1, ctypes.c_int(-3))
    assert key > 0
    probe = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
             "libc.syscall.restype = ctypes.c_long; "
             f"print(libc.syscall({CTL}, 10, ctypes.c_int(-3), b'user', b'krate-unit-key', 0), "
             "ctypes.get_errno())")
    before = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                            text=True).stdout.split()
    spec = build(argv=(sys.executable, "-c", probe), cwd="/", workspace="/var/tmp",
                 allow_write=(), read_only=(), deny_read=(), env={})
    bubblewrap = backend.named("bubblewrap", sys.argv[1])
    with bubblewrap.open(spec, run_id="r", data_dir=Path("/nonexistent")) as sandbox:
        sandbox.start(None)
        sandbox.release()
        sandbox.wait()
    print(json.dumps({"key": key, "before": before}))
    """
)
STAND_IN_BWRAP = '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel keyrings are Linux's")
def test_the_sandbox_is_started_in_a_fresh_session_keyring(tmp_path):
    bwrap = tmp_path / "bwrap"
    bwrap.write_text(STAND_IN_BWRAP)
    bwrap.chmod(0o755)
    out = subprocess.run([sys.executable, "-c", KEYRING_SCRIPT, str(bwrap)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    sandbox, last = out.stdout.splitlines()
    result = json.loads(last)
    assert result["before"] == [str(result["key"]), "0"]  # a child inherits the caller's keys
    assert sandbox.split() == ["-1", "126"], out.stdout  # ENOKEY: a new, empty session keyring


def test_a_refused_session_keyring_refuses_the_run_and_none_is_needed_elsewhere():
    from krate.errors import KrateError
    from krate.sandbox import keyrings

    with pytest.raises(KrateError) as refused:
        keyrings.join_new_session("linux", call=lambda: (-1, 122))  # EDQUOT
    assert refused.value.exit_code == 125 and "quota" in str(refused.value)
    assert keyrings.join_new_session("linux", call=lambda: (-1, 38)) is False  # no keyrings
    assert keyrings.join_new_session("linux", call=lambda: None) is False  # unknown CPU
    assert keyrings.join_new_session("darwin", call=lambda: 1 / 0) is False
    assert keyrings.join_new_session("linux", call=lambda: (42, 0)) is True
