"""Start the egress proxy process: its script (or that script's fresh bytecode) and its config.

The configuration goes over stdin as one JSON line, never in argv or the environment
(it may hold the run's proxy credential).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from krate.bytecode import fresh as fresh_bytecode
from krate.egress import scratch
from krate.errors import EXIT_KRATE_FAILED, KrateError

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import IO, Any

HERE = Path(__file__).resolve().parent
PROXY = HERE / "proxy.py"
BRIDGE = HERE / "bridge.py"
BRIDGE_DNS = HERE / "bridge_dns.py"  # loaded by the bridge, beside it


def proxy_script() -> Path:
    """What the proxy runs: its cached bytecode when it matches proxy.py, else proxy.py.

    Python compiles a script on every start (about 5 ms of every networked run for
    proxy.py) but can run its bytecode directly; the header is checked against the
    source here exactly as an import would check it. `krate audit network --prove`
    compares that bytecode with its source.
    """
    return fresh_bytecode(PROXY) or PROXY


def spawn_proxy(
    python: str, config: dict[str, Any], folder: Path
) -> tuple[subprocess.Popen, IO[bytes]]:
    """The proxy process, given its configuration, and the file its own errors go to."""
    process, stderr = start_proxy(python, config["journal_fd"], config["given"], folder)
    send_config(process, config)
    return process, stderr


def start_proxy(
    python: str, journal_fd: int, given: dict[str, Any], folder: Path
) -> tuple[subprocess.Popen, IO[bytes]]:
    """The proxy process, told only its modules (`given`): it imports them while krate
    makes its configuration (`send_config`); and the file its own errors go to."""
    # Its bytecode is this interpreter's: another one gets the source.
    script = proxy_script() if python == os.path.realpath(sys.executable) else PROXY
    # The proxy's own errors, shown only when it fails to start (an unlinked file: no leftovers;
    # made in the run's private folder, not by tempfile: scratch.py says why).
    stderr = scratch.unlinked_file(folder, "proxy-errors")
    # Started with Ctrl-C ignored, so Python installs no handler for it: a Ctrl-C at the
    # terminal while the proxy starts (it reaches krate's whole group) cannot kill it.
    ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = subprocess.Popen(
            [python, "-I", "-S", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            pass_fds=(journal_fd,),
            close_fds=True,
            cwd="/",
            env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            start_new_session=False,
        )
    except OSError as exc:
        stderr.close()
        os.close(journal_fd)
        scratch.remove(folder)
        raise KrateError(
            f"cannot start the egress proxy ({exc.strerror}); check that {python} runs",
            exit_code=EXIT_KRATE_FAILED,
        ) from exc
    finally:
        signal.signal(signal.SIGINT, ctrl_c)
    write_line(process, {"given": given})
    return process, stderr


def send_config(process: subprocess.Popen, config: dict[str, Any]) -> None:
    """The configuration line (it may hold the run's proxy credential: stdin only)."""
    write_line(process, config)


def write_line(process: subprocess.Popen, line: dict[str, Any]) -> None:
    # A proxy that exits at once (it cannot start) closes the pipe: failure() says why.
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write((json.dumps(line) + "\n").encode())
        process.stdin.flush()
