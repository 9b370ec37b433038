"""The Seatbelt launcher keeps the terminal, checked on Linux with a stand-in `sandbox-exec`.

The stand-in (test_sandbox_seatbelt_launcher.py's) drops `-p PROFILE --` and executes
the command, as `sandbox-exec` does once the profile is applied. A small driver runs
the real SeatbeltLauncher under a real pty (terminal_support.Terminal), as root and as
the ordinary user: the workload must own the terminal's foreground (before, it was a
background process group, so a REPL reading the terminal was stopped by SIGTTIN),
Ctrl-C must reach it without ending the run, and Ctrl-Z must stop the whole job until
`fg`.

What this does not cover: macOS's own process-group, session and signal behaviour
(Linux's job control is POSIX's, so the mechanics are the same, but it is not run on a
Mac here), whether Seatbelt's profile lets the workload use the terminal (the
evaluator in test_seatbelt_decisions.py answers that for /dev/tty and ioctls), and
TIOCSTI, which nothing refuses on macOS (docs/run.md).
"""

from __future__ import annotations

import sys

import pytest

from .conftest import chown_tree, wait_for
from .terminal_support import Terminal, group_states, waiting
from .test_sandbox_seatbelt_launcher import STAND_IN

DRIVER = """
import os, sys
from pathlib import Path
from krate.sandbox import backend
from krate.sandbox.spec import Limits, build

exe, ws = sys.argv[1], Path(sys.argv[2])
spec = build(argv=tuple(sys.argv[3:]), cwd=ws, workspace=ws, allow_write=(), read_only=(),
             deny_read=(), env={"PATH": os.defpath}, limits=Limits())
with backend.named("seatbelt", exe).open(spec, run_id="r1", data_dir=ws / "data") as sandbox:
    sandbox.start(None)
    sandbox.release()
    outcome = sandbox.wait()
sys.exit(outcome.exit_code)
"""


@pytest.fixture
def stand_in(box):
    """(the driver's argv before the workload's, its environment) in the box."""
    folder = box.base / "seatbelt"
    (folder / "bin").mkdir(parents=True)
    exe = folder / "bin" / "sandbox-exec"
    exe.write_text(STAND_IN)
    exe.chmod(0o755)
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    if box.user:
        chown_tree(folder, box.user)
    return [sys.executable, str(driver), str(exe), str(box.ws)], box.env()


def test_the_workload_owns_the_terminal_and_survives_ctrl_c(box, stand_in, terminals):
    argv, env = stand_in
    term = Terminal([*argv, "python3", "-q"], env=env, cwd=box.ws, user=box.user)
    terminals.append(term)
    at = term.expect(rb">>> ")  # before: stopped by SIGTTIN, nothing ever came
    term.send(b"6*7\n")
    at = term.expect(rb"6\*7\r\n42\r\n>>> ", at)
    waiting(term, "python3")
    term.send(b"\x03")
    at = term.expect(rb"KeyboardInterrupt\r\n>>> ", at)
    term.send(b"raise SystemExit(6)\n")
    assert term.wait() == 6, term.out


def test_ctrl_z_stops_the_job_and_fg_resumes_it(box, stand_in, terminals):
    argv, env = stand_in
    term = Terminal(["bash", "--norc", "--noprofile", "-i"], env=env, cwd=box.ws, user=box.user)
    terminals.append(term)
    term.send(b"echo up-$((1+1))\n")
    at = term.expect(rb"up-2\r\n")
    term.send(" ".join([*argv, "python3", "-q"]).encode() + b"\n")
    at = term.expect(rb">>> ", at)
    job = term.foreground()
    term.send(b"\x1a")
    at = term.expect(rb"Stopped", at)
    states = wait_for(
        lambda: (s := group_states(job)) and all(v == "T" for v in s.values()) and s,
        what="the driver and the workload stopped",
    )
    assert len(states) >= 2, states
    term.send(b"fg\n")
    wait_for(lambda: "T" not in group_states(job).values(), what="the job running again")
    term.send(b"6*7\n")
    at = term.expect(rb"42\r\n>>> ", at)
    term.send(b"raise SystemExit(4)\n")
    term.send(b"echo rc=$?\n")
    term.expect(rb"rc=4\r\n", at)
