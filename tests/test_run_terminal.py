"""Interactive work under a real pseudo-terminal: shells, REPLs and full-screen programs.

Each test drives the installed `krate` as a real subprocess, the session leader of a
pty (terminal_support.Terminal) or a command typed into an interactive bash that leads
it, as root and as the ordinary `krate-test` user (the `box` fixture). With stdin a
terminal, the workload runs in the terminal's session and foreground process group
(supervise.py): job control, Ctrl-C, Ctrl-Z, SIGWINCH and the terminal's modes behave
as outside, and the seccomp filter, not a new session, keeps TIOCSTI out.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from krate.sandbox import supervise

from .conftest import KRATE, wait_for
from .terminal_support import Terminal, comm, group_states, waiting

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

BASH = ["bash", "--norc", "--noprofile", "-i"]
# Behind the egress bridge (default profile), and without network: the shell hold
# (sandbox/hold.py) is then bubblewrap's first process until the workload runs.
NETWORKS = pytest.mark.parametrize("net", [(), ("--no-network",)], ids=["bridge", "no-network"])


def krate_in_terminal(box, *args: str) -> Terminal:
    return Terminal([KRATE, *box.args(("run", *args))], env=box.env(), cwd=box.ws, user=box.user)


def shell_in_terminal(box) -> Terminal:
    """A user's own interactive bash in the terminal, with job control: krate is typed there."""
    return Terminal(BASH, env=box.env(), cwd=box.ws, user=box.user)


def typed(box, *args: str) -> bytes:
    return " ".join([KRATE, *box.args(("run", *args))]).encode() + b"\n"


@NETWORKS
def test_ctrl_c_reaches_the_job_inside_and_never_kills_the_sandbox(box, terminals, net):
    term = krate_in_terminal(box, *net, "--", *BASH)
    terminals.append(term)
    term.send(b"tty >/dev/null && : </dev/tty && echo tty-$((40+2)); ")
    term.send(b"set -o | grep -c 'monitor.*on'\n")
    at = term.expect(rb"tty-42\r\n1\r\n")  # a terminal, and job control is on
    term.send(b"echo held-$(tr '\\0' '\\n' </proc/1/cmdline | grep -c '^IFS= read -r go')\n")
    # started by the hold without network (where /bin/sh is dash: sandbox/hold.py)
    dash = os.path.basename(os.path.realpath("/bin/sh")) == "dash"
    at = term.expect(b"held-%d\r\n" % (len(net) and dash), at)
    for i in range(5):
        term.send(b"sleep 100\n")
        wait_for(lambda: comm(term.foreground()) == "sleep", what="sleep in the foreground")
        term.send(b"\x03")
        term.send(b"echo st=$?-%d\n" % i)
        at = term.expect(rb"st=130-%d\r\n" % i, at)
    term.send(b"exit 3\n")
    assert term.wait() == 3, term.out
    assert b"cannot set terminal process group" not in term.out
    assert b"no job control" not in term.out and b"krate:" not in term.out, term.out
    run = box.last_run()
    assert (run["status"], run["exit_code"]) == ("finished", 3), run


@NETWORKS
def test_ctrl_z_stops_the_whole_workload_and_fg_resumes_it(box, terminals, net):
    term = shell_in_terminal(box)
    terminals.append(term)
    term.send(b"echo up-$((1+1))\n")
    at = term.expect(rb"up-2\r\n")
    term.send(typed(box, *net, "--", "python3", "-q"))
    at = term.expect(rb">>> ", at)
    job = term.foreground()  # krate's job: krate, bubblewrap and the workload
    assert comm(job) == "krate"
    term.send(b"\x1a")
    at = term.expect(rb"Stopped", at)
    states = wait_for(
        lambda: (s := group_states(job)) and all(v == "T" for v in s.values()) and s,
        what="every process of the job stopped",
    )
    assert len(states) >= 3, states  # krate, bubblewrap, the workload (and the proxy)
    term.send(b"fg\n")  # SIGCONT, with the terminal given back
    wait_for(lambda: "T" not in group_states(job).values(), what="the job running again")
    term.send(b"6*7\n")
    at = term.expect(rb"6\*7\r\n42\r\n>>> ", at)
    term.send(b"raise SystemExit(4)\n")
    term.send(b"echo rc=$?\n")
    term.expect(rb"rc=4\r\n", at)
    term.send(b"exit\n")
    term.wait()


RESIZE = """
import os, signal, sys
def show(*_):  # os.write: a handler may interrupt a print
    os.write(1, b"size %d %d\\n" % tuple(os.get_terminal_size(0)))
signal.signal(signal.SIGWINCH, show)
show()
while sys.stdin.readline().strip() != "q":
    pass
"""


@NETWORKS
def test_a_resize_reaches_a_full_screen_program(box, terminals, net):
    term = krate_in_terminal(box, *net, "--", "python3", "-c", RESIZE)
    terminals.append(term)
    at = term.expect(rb"size 80 24\r\n")
    term.resize(40, 132)
    at = term.expect(rb"size 132 40\r\n", at)
    term.resize(30, 100)
    term.expect(rb"size 100 30\r\n", at)
    term.send(b"q\n")
    assert term.wait() == 0, term.out


def test_the_python_repl_echoes_input_and_survives_ctrl_c(box, terminals):
    term = krate_in_terminal(box, "--", "python3", "-q")
    terminals.append(term)
    at = term.expect(rb">>> ")
    term.send(b"6*7\n")
    at = term.expect(rb"6\*7\r\n42\r\n>>> ", at)
    # A REPL user's Ctrl-C, four times, never three within the emergency exit's window
    # (two are: the exit is announced once). Before, the third of the session killed it.
    for _ in range(4):
        waiting(term, "python3")
        term.send(b"\x03")
        at = term.expect(rb"KeyboardInterrupt\r\n[^>]*>>> ", at)
        time.sleep(supervise.EMERGENCY_S / 2 + 0.1)  # the window itself is under test
    term.send(b"6*8\n")
    at = term.expect(rb"48\r\n>>> ", at)
    term.send(b"raise SystemExit(5)\n")
    assert term.wait() == 5, term.out
    assert term.out.count(b"krate:") <= 1, term.out
    assert box.last_run()["status"] == "finished"


INJECT = """
import errno, fcntl, sys, termios
try:
    for ch in b"Q7Q":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([ch]))
    print("injected", flush=True)
except OSError as exc:
    print("refused", errno.errorcode[exc.errno], flush=True)
"""


def test_tiocsti_injection_from_inside_never_reaches_the_terminal(box, terminals):
    term = krate_in_terminal(box, "--", "python3", "-c", INJECT)
    terminals.append(term)
    term.expect(rb"refused EPERM\r\n")
    assert term.wait() == 0, term.out
    assert term.queued_input() == 0  # nothing waits to be read by the shell after krate
    assert b"Q7Q" not in term.out
    kernel = box.last_run()["layout"]["kernel"]
    assert "ioctl(TIOCSTI)" in kernel["seccomp"], kernel


def test_the_injection_probe_sees_an_injection_outside_the_sandbox(box, terminals):
    """The probe above can tell: without krate the characters arrive (when the kernel
    still allows TIOCSTI, dev.tty.legacy_tiocsti = 1)."""
    try:
        legacy = Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip()
    except OSError:
        legacy = "1"  # older kernels: always allowed
    if legacy != "1":
        pytest.skip("the kernel refuses TIOCSTI itself")
    term = Terminal(["python3", "-c", INJECT], env=box.env(), cwd=box.ws, user=box.user)
    terminals.append(term)
    term.expect(rb"injected\r\n")
    assert term.wait() == 0
    assert term.queued_input() == 3 or b"Q7Q" in term.out


@pytest.mark.parametrize(
    "script", ["stty raw -echo; exit 0", "stty raw -echo; kill -KILL $$"], ids=["exit", "sigkill"]
)
def test_terminal_modes_are_restored_after_the_run(box, terminals, script):
    term = krate_in_terminal(box, "--", "sh", "-c", f"stty -g; {script}")
    terminals.append(term)
    before = term.modes()
    code = term.wait()
    assert code == (0 if "exit" in script else 128 + signal.SIGKILL), term.out
    assert term.modes() == before


IGNORES_ALL = """
import signal, time
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP):
    signal.signal(s, signal.SIG_IGN)
print("stubborn", flush=True)
while True:
    time.sleep(1)
"""


@NETWORKS
def test_three_quick_ctrl_c_are_the_emergency_exit(box, terminals, net):
    term = krate_in_terminal(box, *net, "--", "python3", "-c", IGNORES_ALL)
    terminals.append(term)
    at = term.expect(rb"stubborn\r\n")
    # Keys a little apart, as typed: signals sent at the same instant merge into one.
    term.send(b"\x03")
    deadline = time.monotonic() + 20
    while b"a third within" not in term.pump()[at:] and term.proc.poll() is None:
        assert time.monotonic() < deadline, term.out[at:]
        time.sleep(0.2)
        term.send(b"\x03")
    time.sleep(0.2)
    term.send(b"\x03")
    assert term.wait() == 128 + signal.SIGINT, term.out
    assert term.out.count(b"a third within 2 s kills the sandbox") == 1, term.out[at:]
    run = box.last_run()
    assert run["status"] == "interrupted", run


@NETWORKS
def test_closing_the_terminal_ends_the_run_and_leaves_nothing_behind(box, terminals, net):
    marker = "4321.5"  # a sleep only this test starts
    term = krate_in_terminal(box, *net, "--", *BASH)
    terminals.append(term)
    term.send(b"sleep %s & sleep %s\n" % (marker.encode(), marker.encode()))
    wait_for(lambda: comm(term.foreground()) == "sleep", what="sleep in the foreground")
    term.hang_up()
    assert term.wait() == 128 + signal.SIGHUP
    wait_for(lambda: not _sleeping(marker), what="every process of the sandbox gone")
    run = box.last_run()
    assert run["status"] == "interrupted", run


def _sleeping(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == b"sleep\0" + marker.encode() + b"\0":
                        found.append(entry)
            except OSError:
                pass
    return found


def test_ctrl_c_counts_toward_the_emergency_exit_only_within_its_window(capfd):
    """The counter forgets old Ctrl-Cs (before, the third of a whole session killed it)."""
    now = [100.0]
    launcher = supervise.Launcher({}, clock=lambda: now[0], terminal=True)
    presses = []
    for step in (0.0, 1.5, 1.5, 1.5, 1.5, 1.5, 0.5):  # a shell user's Ctrl-C, now and then
        now[0] += step
        presses.append(launcher._insists())
    assert presses == [False] * 7
    now[0] += 0.4
    assert launcher._insists() is True  # three within 2 s: the emergency exit
    assert capfd.readouterr().err.count("a third within 2 s kills the sandbox") == 1
