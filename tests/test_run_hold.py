"""The shell hold of a run without network (sandbox/hold.py): started early, run only on "go".

bubblewrap starts before `run.started` is committed, its first process a shell that
executes the workload only after reading the line `go` from krate's pipe. The attacks:
krate SIGKILLed while the sandbox waits (end of file), bytes other than `go`, a signal
before the go-ahead, and workload argv or environment that a shell would interpret or
change. Real bubblewrap, the installed `krate` as a subprocess, a real store; as root
and as the ordinary krate-test user (the `box` fixture).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krate.sandbox import hold

from .conftest import wait_for
from .egress_support import BWRAP

pytestmark = pytest.mark.skipif(
    BWRAP is None or os.path.basename(os.path.realpath("/bin/sh")) != "dash",
    reason="needs bubblewrap and dash as /bin/sh",
)

# What the hold's shell runs as (built here so no workload's own argv matches it).
HOLD_MARK = "read -r " + "go <&"


def as_user(box) -> dict:
    if not box.user:
        return {}
    return {"user": box.user, "group": pwd.getpwnam(box.user).pw_gid, "extra_groups": []}


def held_shells(marker: str) -> list[int]:
    """Pids of hold shells (bubblewrap's command, before `go`) whose workload names `marker`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        hold = argv[:2] == [b"/bin/sh", b"-c"] and HOLD_MARK.encode() in argv[2]
        if hold and any(marker.encode() in a for a in argv[3:]):
            out.append(int(entry))
    return out


def processes_naming(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    out.append(int(entry))
            except OSError:
                continue
    return out


class StoreHeld:
    """The store's write lock held by another process: krate waits at step 3 (record)."""

    CODE = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )

    def __init__(self, box) -> None:
        assert box.krate("run", "--no-network", "--", "true").returncode == 0  # the store exists
        db = next(box.krate_home.rglob("krate.db"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(db)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, **as_user(box),
        )  # fmt: skip
        assert self.proc.stdout.readline() == "held\n"

    def release(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_ids(box) -> list[str]:
    return [r["id"] for r in json.loads(box.krate("runs", "list", "--json").stdout)]


def test_a_killed_krate_never_lets_its_held_workload_run(box):
    """SIGKILL while the sandbox waits for "go": end of file, so the workload never runs;
    nothing of the run is recorded, and nothing of it is left running."""
    marker = box.ws / f"ran-{os.getpid()}-{time.time_ns() % 10**6}"
    store = StoreHeld(box)
    before = run_ids(box)
    try:
        krate = box.popen(
            "run", "--no-network", "--", "/bin/sh", "-c", f"touch {marker}",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        shell = wait_for(lambda: held_shells(marker.name), what="the held sandbox")[0]
        time.sleep(0.3)  # the sandbox is set up and waiting; krate waits for the store
        assert krate.poll() is None and not marker.exists()
        krate.kill()
        krate.wait(timeout=10)
        wait_for(lambda: not processes_naming(marker.name), 10, "the sandbox to end")
        assert not Path(f"/proc/{shell}").exists() or shell not in processes_naming(marker.name)
    finally:
        store.release()
    time.sleep(0.5)
    assert not marker.exists(), "the workload ran although krate never said go"
    # krate died waiting to record the start: no run.started, no run of it at all
    assert run_ids(box) == before
    assert box.krate("audit", "verify").returncode == 0


def test_a_signal_before_go_means_the_workload_never_runs(box):
    """SIGTERM while held: krate keeps it (the shell would die of it), never says go,
    and records the run interrupted, 143, the workload not started."""
    marker = box.ws / f"ran-{os.getpid()}"
    store = StoreHeld(box)
    try:
        krate = box.popen(
            "run", "--no-network", "--", "/bin/sh", "-c", f"touch {marker}",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: held_shells(marker.name), what="the held sandbox")
        time.sleep(0.2)
        krate.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert krate.poll() is None  # still waiting for the store
    finally:
        store.release()
    _out, err = krate.communicate(timeout=60)
    assert krate.returncode == 143, err
    assert not marker.exists()
    run = box.last_run()
    assert (run["status"], run["exit_code"]) == ("interrupted", 143), run
    assert "SIGTERM" in run["reason"]


# The launcher as a run makes it, told to write `data` instead of "go" (nothing: end of file).
ALONE = """
import json, os, sys
from pathlib import Path
from krate.sandbox.backend_bwrap import BwrapLauncher
from krate.sandbox.spec import build

ws, data = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
spec = build(
    argv=("/bin/sh", "-c", f"touch {ws}/ran; exit 7"), cwd=ws, workspace=ws, allow_write=(),
    read_only=(), deny_read=(), env={"PATH": "/usr/bin:/bin"},
)
with BwrapLauncher(spec, sys.argv[3], None) as launcher:
    launcher.start(None)
    held = launcher.hold
    assert held is not None and held.holding, "no hold"
    if data == b"go\\n":
        launcher.release()
    else:
        if data:
            os.write(held.go_write, data)
        os.close(held.go_write)
        held.go_write = None
    out = launcher.wait()
print(json.dumps([out.exit_code, out.status, out.reason, out.started]))
"""


@pytest.mark.parametrize(
    "data",
    [b"", b"1", b"1\n", b"g", b"go", b"gox\n", b" go\n", b"GO\n", b"go \n", b"o\n", b"go\r\n"],
    ids=repr,
)
def test_only_the_line_go_releases_the_workload(box, data):
    """End of file, a line cut short or any other bytes: the shell exits without the workload."""
    done = subprocess.run(
        [sys.executable, "-c", ALONE, str(box.ws), data.hex(), BWRAP],
        capture_output=True, text=True, timeout=60, cwd=box.ws, stdin=subprocess.DEVNULL,
        **as_user(box),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    code, status, reason, started = json.loads(done.stdout)
    assert not (box.ws / "ran").exists(), f"{data!r} let the workload run"
    assert (code, status, started) == (125, "failed", False)
    assert reason == "the sandbox's hold exited 1 before the workload started"


def test_go_releases_the_workload(box):
    done = subprocess.run(
        [sys.executable, "-c", ALONE, str(box.ws), b"go\n".hex(), BWRAP],
        capture_output=True, text=True, timeout=60, cwd=box.ws, stdin=subprocess.DEVNULL,
        **as_user(box),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [7, "finished", None, True]
    assert (box.ws / "ran").exists()


# Prints its argv, environment and open descriptors, and whether the hold started it.
SHOW = (
    "import json, os, sys\n"
    "fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
    "first = open('/proc/1/cmdline', 'rb').read().split(b'\\0')\n"
    "held = any(b'read -r ' + b'go <&' in a for a in first)\n"
    "print(json.dumps([sys.argv[1:], dict(os.environ), fds, held]))\n"
)
ARGV = [
    "-n", "--", "$(touch pwned)", "`touch pwned`", "a b", "line\nbreak", "*", "?", "'", '"',
    "\\", "$HOME", "${PATH}", ";", "&&", "|", ">x", "<&3", "", " ", "-c", "exit 3", "\t",
]  # fmt: skip


def show(box, *krate_args: str, env: dict | None = None) -> tuple[list, dict, list, bool]:
    done = box.krate(
        "run", "--no-network", *krate_args, "--", "python3", "-I", "-c", SHOW, *ARGV, env=env
    )
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout))


def test_the_workloads_argv_passes_byte_exact_and_nothing_else_is_inherited(box):
    argv, env, fds, held = show(box)
    assert held, "the run did not go through the hold"
    assert argv == ARGV
    assert not (box.ws / "pwned").exists() and not (box.ws / "x").exists()
    # 0-2, and listdir's own: not the go pipe
    assert len(fds) == 4 and fds[:3] == [0, 1, 2], fds
    assert env["PWD"] == str(box.ws)  # bubblewrap's, as without the hold
    for name in ("IFS", "OPTIND", "PPID"):
        assert name not in env


def test_the_environment_is_the_same_with_and_without_the_hold(box):
    """What the shell would change keeps the old start; what it keeps arrives unchanged."""
    odd = {"A_VALUE": "x\ny z\t$(touch pwned)*", "LINENO": "99", "PS4": "+x", "ENV": "/x"}
    held_env = box.env(**odd, PWD=str(box.ws))
    _argv, env, _fds, held = show(box, env=held_env)
    assert held
    for name, value in {**odd, "PWD": str(box.ws)}.items():
        assert env.get(name) == value, name
    _argv, env, _fds, held = show(box, env=box.env(PWD="/"))
    assert held and env["PWD"] == str(box.ws)  # bubblewrap sets it, with the hold or without
    changed = [{"IFS": " x"}, {"OPTIND": "5"}, {"PPID": "1"}, {"A-B": "1"}, {"a.b": "1"}]
    for extra in changed:
        _argv, env, _fds, held = show(box, env=box.env(**extra))
        assert not held, extra  # the old start: bubblewrap executes the workload itself
        for name, value in extra.items():
            assert env.get(name) == value, extra
    assert not (box.ws / "pwned").exists()


def test_what_dash_would_change_keeps_the_old_start():
    visible = lambda _p: True  # noqa: E731
    assert hold.usable({"PATH": "/bin", "_x1": ""}, ["true"], visible)
    assert not hold.usable({}, ["-x"], visible)
    assert not hold.usable({}, [], visible)
    assert not hold.usable({}, ["true"], lambda _p: False)  # /bin/sh hidden
    for name in ("IFS", "OPTIND", "PPID", "A-B", "1A", "a.b", ""):
        assert not hold.usable({name: "1"}, ["true"], visible), name
    if os.path.exists("/bin/bash"):
        assert not hold.usable({}, ["true"], visible, shell="/bin/bash")


def test_exit_statuses_after_the_start_are_the_workloads(box):
    for code in (0, 1, 7, 125, 126, 127):
        done = box.krate("run", "--no-network", "--", "/bin/sh", "-c", f"exit {code}")
        assert done.returncode == code, done.stderr
        run = box.last_run()
        assert (run["status"], run["exit_code"], run["reason"]) == ("finished", code, None)
    for argv, code in ((["./no-such-tool"], 127), (["./README"], 126)):
        done = box.krate("run", "--no-network", "--", *argv)
        assert done.returncode == code, done.stderr
        assert done.stderr.startswith("krate: ") and len(done.stderr.splitlines()) == 1
