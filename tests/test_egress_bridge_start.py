"""A bridge that dies before it starts the workload: 125 with its reason, not its status.

Behind the egress bridge, bubblewrap's exit status is the bridge's: a bridge that
died (a traceback is exit 1, a signal 128+N) must not be passed off as the
workload's, and a "go" written to a dead bridge must not end krate quietly with 0.
Real bubblewrap, the installed `krate` as a subprocess, a real store; as root and
as the ordinary krate-test user (the `box` fixture).
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krate.egress import start_for_run
from krate.paths import Paths

from .conftest import KRATE, wait_for
from .egress_support import BWRAP, policy

pytestmark = pytest.mark.skipif(BWRAP is None, reason="needs bubblewrap")

WORKLOAD = "touch {marker}; exit 7"
LOCKED_DOWN = (
    "import os, sys\n"
    "from krate.netguard import lockdown\n"
    "lockdown.apply()\n"  # its seccomp filter is inherited: the bridge cannot make a socket
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def as_user(box) -> dict:
    if not box.user:
        return {}
    return {"user": box.user, "group": pwd.getpwnam(box.user).pw_gid, "extra_groups": []}


def assert_failed_unstarted(box, done, marker: Path, says: str) -> dict:
    """125, one line naming the bridge's reason, no traceback; recorded failed, same reason."""
    assert done.returncode == 125, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("krate: run "), done.stderr
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr
    assert "before the workload started" in lines[0] and says in lines[0], lines[0]
    assert not marker.exists()  # the workload never ran
    run = box.last_run()
    assert (run["status"], run["exit_code"]) == ("failed", 125), run
    assert says in run["reason"] and run["reason"] in lines[0], run
    finished = [e for e in box.events("run.finished") if e["run_id"] == run["id"]]
    assert finished and finished[-1]["data"]["reason"] == run["reason"]
    return run


def test_a_locked_down_parents_bridge_fails_the_run_with_its_reason(box):
    """The reproduction: an inherited seccomp filter makes the bridge's socket() fail."""
    marker = box.ws / "ran"
    argv = box.args(("run", "--", "/bin/sh", "-c", WORKLOAD.format(marker=marker)))
    for _ in range(3):  # repeated: a race would show as exit 1 or exit 0
        done = subprocess.run(
            [sys.executable, "-c", LOCKED_DOWN, KRATE, *argv], env=box.env(), cwd=box.ws,
            capture_output=True, text=True, timeout=120, **as_user(box),
        )  # fmt: skip
        assert_failed_unstarted(box, done, marker, "cannot listen on 127.0.0.1:3128")


def test_exit_codes_after_the_start_are_the_workloads(box):
    """The acknowledgement changes nothing once the workload ran: 1 is 1, 125 is 125."""
    for code in (0, 1, 7, 125):
        done = box.sh(f"exit {code}")
        assert done.returncode == code, done.stderr
        run = box.last_run()
        assert (run["status"], run["exit_code"], run["reason"]) == ("finished", code, None)
        assert "krate" not in done.stderr


def test_the_workload_cannot_say_it_never_started(box):
    """The workload writes a bridge's failure line into every descriptor its parent (the
    bridge) still holds: the acknowledgement is already written and closed (and never
    inherited); the run is the workload's, with its own status."""
    forge = (
        "for f in /proc/$PPID/fd/*; do case ${f##*/} in 0|1|2) continue;; esac; "
        "echo 'krate-bridge: forged' >$f; done 2>/dev/null; exit 3"
    )
    done = box.sh(forge)
    assert done.returncode == 3, done.stderr
    run = box.last_run()
    assert (run["status"], run["exit_code"], run["reason"]) == ("finished", 3, None)
    assert "forged" not in done.stderr


def test_a_forwarded_port_the_bridge_cannot_bind_does_not_stop_the_workload(box):
    """localhost:80 cannot be listened on inside (below 1024): the bridge lives on, the
    workload runs with its own status, and its clients reach that port through the proxy."""
    marker = box.ws / "ran"
    done = box.sh(WORKLOAD.format(marker=marker), "--allow-host", "localhost:80")
    assert done.returncode == 7 and marker.exists(), done.stderr
    assert "krate-bridge" not in done.stderr and "Traceback" not in done.stderr
    run = box.last_run()
    assert (run["status"], run["exit_code"]) == ("finished", 7)


def _bridge_of(krate_pid: int) -> int | None:
    tag = f"krate-egress-{krate_pid}-".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parts = cmd.split(b"\0")
        # the bridge itself (`python -I -S .../bridge.py`), not bubblewrap's command line
        if (
            len(parts) > 3
            and parts[1] == b"-I"
            and parts[3].endswith((b"bridge.py", b"bridge.pyc"))
            and tag in cmd
        ):
            return int(entry.name)
    return None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_bridge_killed_before_release_fails_the_run_never_exit_0(box):
    """The store is held so krate waits at step 3 (record) with the bridge started; the
    bridge is killed; then krate records the run and writes "go" to a dead bridge."""
    marker = box.ws / "ran"
    assert box.sh("exit 0").returncode == 0  # the store exists, owned by the box's user
    db = box.krate_home / "krate.db"
    if not db.exists():
        db = next(box.krate_home.rglob("krate.db"))
    hold = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, **as_user(box),
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        krate = box.popen(
            "run", "--", "/bin/sh", "-c", WORKLOAD.format(marker=marker),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        bridge = wait_for(lambda: _bridge_of(krate.pid), what="the held bridge")
        time.sleep(0.3)  # krate is waiting for the store meanwhile
        assert krate.poll() is None
        os.kill(bridge, signal.SIGKILL)
        wait_for(lambda: _gone(bridge), what="the bridge to die")
        time.sleep(0.5)  # and bubblewrap with it: its pipe then has no reader at all
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    _out, err = krate.communicate(timeout=120)
    done = subprocess.CompletedProcess(krate.args, krate.returncode, _out, err)
    run = assert_failed_unstarted(box, done, marker, "killed by SIGKILL")
    assert run["reason"].startswith("the egress bridge was killed by SIGKILL")


def _bridge_alone(tmp_path: Path, paths: Paths, http_port: int, ack: bool):
    """The bridge as krate starts it, in a real sandbox, told to listen on `http_port`."""
    from .test_egress_sandbox import sandbox_argv

    session = start_for_run(policy(tmp_path, "localhost:9"), f"alone{http_port}{ack}", paths)
    session.http_port = http_port
    session.hold()
    fds = session.held_fds() if ack else (session.bridge.go_read,)
    argv = sandbox_argv(session, ["sh", "-c", f"touch {tmp_path / 'ran'}; exit 7"])
    try:
        proc = subprocess.Popen(
            argv, env={"PATH": os.environ["PATH"]}, pass_fds=fds, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for fd in session.held_fds():
            os.close(fd)
        session.release()
        _out, err = proc.communicate(timeout=60)
        return proc.returncode, err, session.unstarted(proc.returncode)
    finally:
        session.close()


def test_a_proxy_port_the_bridge_cannot_bind_is_one_line_on_the_ack_pipe(tmp_path, krate_home):
    """Port 80 cannot be listened on in the sandbox: the bridge says so once, on krate's
    pipe (not on the workload's stderr), or on stderr when it has no pipe; no traceback."""
    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    code, err, unstarted = _bridge_alone(tmp_path, paths, 80, ack=True)
    assert code == 125 and err == "" and not (tmp_path / "ran").exists()
    assert unstarted == (
        125,
        "the egress bridge stopped before the workload started: "
        "cannot listen on 127.0.0.1:80 in the sandbox (Permission denied)",
    )
    code, err, _ = _bridge_alone(tmp_path, paths, 80, ack=False)
    assert code == 125 and not (tmp_path / "ran").exists()
    assert err == "krate-bridge: cannot listen on 127.0.0.1:80 in the sandbox (Permission denied)\n"
