"""Signals, wall-clock and memory limits, and killing krate mid-run (as root and as a user)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import wait_for
from .run_support import Box, snapshot

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    wait_for(path.exists, timeout, f"{path} to appear")


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_signals_reach_the_workload(box, signame):
    signum = getattr(signal, signame)
    ready = box.ws / "ready"
    script = (
        f'trap "echo got-{signame}; exit 42" {signame[3:]}; touch ready; '
        "while :; do sleep 0.05; done"
    )
    proc = box.popen("run", "--", "/bin/sh", "-c", script, stdout=subprocess.PIPE, text=True)
    _wait_for(ready)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 42
    assert f"got-{signame}" in out
    run = box.last_run()
    assert run["exit_code"] == 42 and run["status"] == "finished"


def test_untrapped_sigterm_gives_143_not_success(box):
    ready = box.ws / "ready"
    marker = f"6{os.getpid() % 1000}.{time.time_ns() % 1000}"
    proc = box.popen("run", "--", "/bin/sh", "-c", f"touch ready; exec sleep {marker}")
    _wait_for(ready)
    wait_for(lambda: _pids_with(f"sleep\0{marker}"), what="the shell to exec sleep")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM


def test_sigkill_of_krate_kills_the_workload_and_leaves_nothing(box):
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 100000}"
    before = snapshot(box.ws)
    tmp_before = set(os.listdir("/tmp"))
    proc = box.popen(
        "run", "--", "/bin/sh", "-c",
        f"(sleep 1{marker} &) ; sleep 2{marker} & touch ready; sleep 3{marker}",
    )  # fmt: skip
    _wait_for(box.ws / "ready")
    wait_for(lambda: len(_pids_with(marker)) >= 3, what="the three workload processes")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: not _pids_with(marker), 10, "workload processes outlived krate")
    after = snapshot(box.ws)
    after.pop("ready")
    # but git's placeholders: empty ones stay; commondir goes at the next run (below)
    assert after.pop(".git/commondir") == b".\n"
    for new in set(after) - set(before):
        assert new.startswith(".git/") and after.pop(new) in (None, b""), new
    assert after == before, "krate left something in the workspace"

    def new_tmp() -> set[str]:
        return {n for n in set(os.listdir("/tmp")) - tmp_before if "bwrap" in n or "krate" in n}

    # The egress proxy notices krate's death (its stdin closes) and removes its own folder.
    wait_for(lambda: not new_tmp(), 5, "the sandbox's temporary folders to go")
    assert (
        not any((box.krate_home / "run").glob("*")) if (box.krate_home / "run").exists() else True
    )
    listed = json.loads(box.krate("runs", "list", "--json").stdout)
    assert listed[0]["status"] == "interrupted"
    # the next run records the interruption in the chain
    assert box.krate("run", "--", "true").returncode == 0
    assert not (box.ws / ".git" / "commondir").exists()
    kinds = [e["kind"] for e in box.events("run.interrupted")]
    assert kinds == ["run.interrupted"]
    assert box.krate("audit", "verify").returncode == 0


def _user_policy(box: Box, text: str) -> None:
    box.krate_home.mkdir(exist_ok=True)
    (box.krate_home / "policy.toml").write_text(text)
    if box.user:
        from .conftest import chown_tree

        chown_tree(box.krate_home, box.user)


def test_wall_clock_limit_kills_the_tree_and_records_why(box):
    _user_policy(box, "[limits]\nwall_seconds = 1\n")
    marker = f"7{os.getpid() % 1000}.{time.time_ns() % 1000}"
    started = time.monotonic()
    out = box.sh(f"sleep 3{marker} & sleep 4{marker}")
    assert time.monotonic() - started < 10
    assert out.returncode == 128 + signal.SIGKILL
    assert "wall-clock limit" in out.stderr
    wait_for(lambda: not _pids_with(marker), 10, "the killed tree to be gone")
    run = box.last_run()
    assert run["status"] == "timeout" and "wall-clock limit of 1 s" in run["reason"]
    assert run["limits"]["wall_seconds"] == 1


def test_memory_limit_stops_a_workload_that_exceeds_it(box):
    from .test_limits_memory import _enforceable

    _user_policy(box, "[limits]\nmemory_mb = 64\n")
    grab = "python3 -c 'b = bytearray(256 * 1024 * 1024); print(\"allocated\")'"
    out = box.sh(grab)
    if not _enforceable(box):  # no cgroup for this user: refused, never run unlimited
        assert out.returncode == 125 and "cannot be enforced" in out.stderr
        return
    assert out.returncode != 0 and "allocated" not in out.stdout
    assert (
        box.sh("python3 -c 'b = bytearray(8 * 1024 * 1024); print(\"small\")'").stdout == "small\n"
    )
    assert box.last_run()["limits"]["memory_mb"] == 64


def test_process_limit_applies_inside_the_sandbox(box):
    _user_policy(box, "[limits]\nprocesses = 4\n")
    out = box.sh("for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait; echo done")
    if box.user is None:
        # RLIMIT_NPROC does not bind root (the kernel exempts uid 0): --as-root, docs/run.md
        assert out.returncode == 0
    else:
        assert "fork" in out.stderr.lower() or out.returncode != 0
