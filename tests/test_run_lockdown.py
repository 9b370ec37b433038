"""`krate run` locks its own process out of the network once the sandbox exists.

The workload must not inherit that lockdown (its own network namespace confines it,
and allowed egress needs sockets), while krate itself must hold it for the rest of
the run: the real installed `krate`, read back from the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import AS_ROOT, KRATE

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads seccomp state from Linux's /proc"
)

WORKLOAD = (
    "grep '^Seccomp' /proc/self/status | tr '\\n' ' '; echo; "
    "python3 -c 'import socket; socket.socket(socket.AF_INET).close(); print(\"socket ok\")'; "
    "sleep 3"
)


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_krate_locks_itself_after_starting_the_sandbox(tmp_path, krate_home):
    env = dict(os.environ, KRATE_HOME=str(krate_home))
    proc = subprocess.Popen(
        [KRATE, "run", *AS_ROOT, "--no-network", "--", "sh", "-c", WORKLOAD],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The workload: only its own filter (sandbox/seccomp.py), not krate's lockdown
        seccomp = proc.stdout.readline().split()
        assert seccomp[:2] == ["Seccomp:", "2"] and seccomp[2:] in ([], ["Seccomp_filters:", "1"])
        assert proc.stdout.readline().strip() == "socket ok"
        deadline = time.monotonic() + 5
        while status_of(proc.pid).get("Seccomp", "0").strip() != "2":
            assert time.monotonic() < deadline, "krate never locked itself down"
            time.sleep(0.05)
        assert status_of(proc.pid)["NoNewPrivs"].strip() == "1"
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
