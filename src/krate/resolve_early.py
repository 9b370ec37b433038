"""`krate policy explain net`: the name resolved as a run's proxy resolves it, unlocked.

Why: a run's answer depends on where an allowed name resolves (a private address is
refused unless `private_ok` names the host), and krate's own process may not resolve
names: a lookup is network traffic, the guard refuses it in Python and the lockdown
refuses IP sockets. So the answer comes from the proxy's own explain code
(`dial.explain_once`: decide, resolve, check the addresses) in a process of its own:

- the line cli/fastread.py parses (every usual one), on Linux: a copy of krate forked
  at entry (`Forked`), before the guard's audit hook (which a child cannot shed) and
  with only krate and the standard library loaded; krate holds its lockdown until the
  copy answered and ended (cli/views.py), so nothing it started outlives the
  lockdown, and a second interpreter's start and imports (~20 ms) are saved;
- a line Typer parses, macOS, or a failed fork: the egress proxy itself (`start`), started
  at entry like login's transport and told its modules at once, so that it imports
  them while krate loads the policy, then asked in its one-shot explain mode.

Either opens no connection. Standard library only at the top.
"""

from __future__ import annotations

import os
import subprocess
import sys

TYPE_CHECKING = False  # only `subprocess` before the spawn (not typing, pathlib or json)
if TYPE_CHECKING:
    from typing import Any

_held: list[subprocess.Popen | Forked] = []  # the process started at entry, until explain takes it
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


class Forked:
    """The resolver as a copy of krate forked at entry, before its guard and lockdown.

    Forked once what the proxy decides and resolves with is loaded (dial, wire: krate
    and the standard library only, imports held: cli/main.py), it imports nothing
    more: it waits for the one line the proxy would get, answers with the proxy's own
    `dial.explain_once`, and exits; krate waits for it, then locks down. It
    runs as the proxy does: no guard, the proxy's environment (PATH and LC_ALL only,
    so the resolver reads no LOCALDOMAIN, RES_OPTIONS or HOSTALIASES), cwd /,
    Ctrl-C ignored, no descriptor of krate's but its two pipes.
    """

    def __init__(self) -> None:
        from krate.egress import dial, wire  # noqa: F401 (before the fork: the child's code)

        down_r, self.down = os.pipe()
        self.up, up_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(self.down)
                os.close(self.up)
                _resolver(down_r, up_w)
                code = 0
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)

    def communicate(self, line: bytes, timeout: float) -> tuple[bytes, None]:
        """Send the line, read the answer to its end (as Popen.communicate), reap the child."""
        import select
        import time

        try:  # noqa: SIM105 (contextlib: ~1 ms more before the spawn's answer)
            os.write(self.down, line)
        except BrokenPipeError:
            pass  # it died: no answer
        os.close(self.down)
        self.down = -1
        out, deadline = b"", time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.up, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("resolver", timeout)
            if not poller.poll(left * 1000):
                continue
            chunk = os.read(self.up, 65536)
            if not chunk:
                break
            out += chunk
        self.wait()
        return out, None

    def kill(self) -> None:
        import signal

        if self.pid:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> None:
        if self.pid:
            os.waitpid(self.pid, 0)
            self.pid = 0
        for fd in (self.down, self.up):
            if fd >= 0:
                os.close(fd)
        self.down = self.up = -1


def _resolver(down: int, up: int) -> None:
    """The forked child: the proxy's environment, then its one explain answer."""
    import json
    import signal

    from krate.egress.dial import explain_once
    from krate.egress.wire import Config

    for name in (signal.SIGINT, signal.SIGHUP):
        signal.signal(name, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update({"PATH": os.defpath, "LC_ALL": "C.UTF-8"})
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sorted((down, up))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 65536)
    data = b""
    while b"\n" not in data:
        chunk = os.read(down, 65536)
        if not chunk:
            return  # krate went on without it
        data += chunk
    raw = json.loads(data.partition(b"\n")[0])
    answer = explain_once(Config.from_dict(raw), raw["explain"])
    out = (json.dumps(answer) + "\n").encode()
    while out:
        out = out[os.write(up, out) :]


def fork_early() -> None:
    """cli/main.py, before the guard, imports held: fork the resolver; explain takes it
    (or, when the fork failed, starts the proxy then, still before the lockdown).

    Linux only: on macOS a forked child that did not exec may not use the system's
    resolver (it talks to mDNSResponder through services a fork does not carry over),
    so the proxy is started as before."""
    if not sys.platform.startswith("linux"):
        start_early()
        return
    try:
        _held[:] = [Forked()]
    except OSError:
        _held[:] = []


def abandon() -> None:
    """End a process no command took (a usage error...): it exits when stdin ends."""
    process = _take()
    if process is not None:
        process.kill()
        process.wait()


def _take() -> subprocess.Popen | Forked | None:
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
