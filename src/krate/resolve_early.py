"""`krate policy explain net`: the egress proxy, started before the lockdown, resolves the name.

Why: a run's answer depends on where an allowed name resolves (a private address is
refused unless `private_ok` names the host), and krate's own process may not resolve
names: a lookup is network traffic, and the lockdown refuses it IP sockets. The
process that resolves names for runs is the egress proxy; explain starts it at entry
(cli/main.py, like login's transport), before the lockdown and with only krate and the
standard library loaded, and tells it its modules at once, so that it imports them while
krate loads the policy (as a run's proxy does); then it gives it the policy and one host
in its one-shot explain mode (`dial.explain`): the same decide-resolve-check code a run's
connection goes through. It opens no connection. Standard library only at the top.
"""

from __future__ import annotations

import os
import subprocess
import sys

TYPE_CHECKING = False  # only `subprocess` before the spawn (not typing, pathlib or json)
if TYPE_CHECKING:
    from typing import Any

_held: list[subprocess.Popen] = []  # the process started at entry, until explain takes it
PROXY = os.path.join(os.path.dirname(os.path.realpath(__file__)), "egress", "proxy.py")
TIMEOUT_S = 30.0


def wanted(args: list[str]) -> bool:
    """`krate policy explain ... net ...` that will ask (not --help, not --no-resolve)."""
    if args[:2] != ["policy", "explain"] or "net" not in args[2:]:
        return False
    return not any(a in ("-h", "--help", "--no-resolve") for a in args[2:])


def start() -> subprocess.Popen:
    """The proxy process, told its modules at once (as a run's proxy is): it imports what
    decides and resolves while krate loads the policy, then waits for the policy and host."""
    from krate.bytecode import fresh

    script = fresh(PROXY) or PROXY  # its bytecode when fresh, as a run's proxy (egress/spawn.py)
    process = subprocess.Popen(
        [os.path.realpath(sys.executable), "-I", "-S", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        cwd="/",
        env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
    )
    import json

    from krate.egress import helperlib  # krate and the standard library: while it starts

    first = {"given": helperlib.given(), "explain": True}
    try:
        process.stdin.write((json.dumps(first) + "\n").encode())
        process.stdin.flush()
    except BrokenPipeError:
        pass  # it died: explain() reports that it gave no answer
    return process


def start_early() -> None:
    """cli/main.py, before the lockdown: start it; the explain command takes it."""
    _held[:] = [start()]


def abandon() -> None:
    """End a process no command took (a usage error...): it exits when stdin ends."""
    process = _take()
    if process is not None:
        process.kill()
        process.wait()


def _take() -> subprocess.Popen | None:
    """The process started at entry (once), or None (the in-process entry)."""
    return _held.pop() if _held else None


def explain(config: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    """The proxy's answer for one connection to host:port: verdict, rule, layer, reason, hint.

    `config` holds the policy's rules as a run's proxy gets them. Uses the process
    started at entry, or starts one now (the in-process entry has no lockdown).
    """
    import json

    process = _take() or start()
    line = json.dumps({**config, "explain": {"host": host, "port": port}}) + "\n"
    try:
        out, _ = process.communicate(line.encode(), timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"reason": f"resolving {host} took longer than {TIMEOUT_S:.0f} s"}
    for raw in out.splitlines():
        try:
            answer = json.loads(raw)
        except ValueError:
            continue
        if isinstance(answer, dict) and answer.get("type") == "explain":
            return answer
    return {"reason": "the egress proxy gave no answer"}
