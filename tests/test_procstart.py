"""Stale-run detection without /proc (macOS): process identities from sysctl or ps.

On Linux the /proc path is the one used; these tests point it at a folder that
does not exist, so the non-/proc path runs for real (`ps -o lstart=`), and check
that per-run folders of a reused pid are swept and a live krate's are kept. The
macOS sysctl path is checked only through its parser (`from_kinfo`) with a
buffer laid out as `struct kinfo_proc` begins: the sysctl call itself and the
real struct's layout are not covered here (scripts/macos-smoke runs on a Mac).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from krate.sandbox import leftovers, procstart


@pytest.fixture
def no_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(procstart, "PROC", str(tmp_path / "no-proc"))


def test_without_proc_the_identity_comes_from_ps(no_proc):
    me = procstart.identity(os.getpid(), platform="linux")
    assert me and " " not in me and me == procstart.identity(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert procstart.identity(child.pid, platform="linux")
    finally:
        child.kill()
        child.wait()
    assert procstart.identity(child.pid, platform="linux") is None


def test_without_proc_a_reused_pid_does_not_keep_a_stale_run_folder(no_proc, tmp_path):
    base = tmp_path / "run"
    with leftovers.run_folder(base, "live") as live:
        owner = (live / "owner").read_text().split()
        assert owner[1] != "-"  # an identity was recorded, not "unknown"
        stale = base / "stale"
        stale.mkdir()
        # the same live pid, but another start time: the pid was reused
        (stale / "owner").write_text(f"{os.getpid()} Thu-Jan-1-00:00:00-1970\n")
        removed = leftovers.sweep_stale(base)
        assert removed == [stale] and live.exists()
        assert leftovers.alive(os.getpid(), owner[1])


def test_the_macos_start_time_is_read_from_kinfo_proc():
    head = struct.pack("=qi", 1764886110, 42) + b"\0" * 4  # struct timeval, padded
    assert procstart.from_kinfo(head + b"\0" * 632) == "1764886110.000042"
    assert procstart.from_kinfo(b"") is None  # no such process: sysctl returns nothing
    assert procstart.from_kinfo(b"\0" * 648) is None
