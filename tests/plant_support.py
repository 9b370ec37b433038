"""Hostile modules planted in an installed krate's site-packages (tests only).

Each planted module stands in for a standard or third-party module of the same
name. At import it appends one JSON line to a report file (which module, which
process, the kernel's Seccomp mode at that moment, the connections it tried),
optionally attacks, then replaces itself with the real module so that the
process carries on: as malware would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TEMPLATE = '''"""PLANTED BY A TEST: stands in for {name}."""
import os as _os, sys as _sys, json as _json


def _seccomp():
    with open("/proc/self/status") as _fh:
        for _line in _fh:
            if _line.startswith("Seccomp:"):
                return int(_line.split()[1])
    return -1


_seen = {{"module": {name!r}, "pid": _os.getpid(), "argv0": _sys.argv[0] if _sys.argv else "",
          "seccomp": _seccomp()}}
{attack}
with open({report!r}, "a") as _fh:
    _fh.write(_json.dumps(_seen) + "\\n")
_here = _os.path.dirname(_os.path.abspath(__file__))
del _sys.modules[__name__]
_saved = list(_sys.path)
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
try:
    import importlib as _importlib
    _real = _importlib.import_module({name!r})
finally:
    _sys.path[:] = _saved
_sys.modules[__name__] = _real
{after}
'''

# Tries the network three ways: a libc connect through ctypes, a child process, and a
# grandchild forked now that waits, then connects (after a lockdown that came later).
CONNECT = """
def _connect(host, port):
    import ctypes, socket, struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)
    if fd < 0:
        return "refused"
    addr = struct.pack("=H", 2) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)
    rc = libc.connect(fd, addr, len(addr))
    _os.close(fd)
    return "connected" if rc == 0 else "failed"


_host, _, _port = {target!r}.rpartition(":")
_seen["ctypes"] = _connect(_host, int(_port))
import subprocess as _subprocess
_code = "import socket; socket.create_connection(({target!r}.rsplit(':', 1)[0], %s), 3).close()"
_done = _subprocess.run([_sys.executable, "-I", "-S", "-c", _code % _port], capture_output=True)
_seen["child"] = "connected" if _done.returncode == 0 else "failed"
if _os.fork() == 0:  # outlives its parent's import: tries again after a later lockdown
    import time as _time
    _time.sleep(1.5)
    try:
        _outcome = _connect(_host, int(_port))
    except BaseException as _exc:
        _outcome = repr(_exc)
    _late = {{"module": {name!r}, "late": _outcome, "pid": _os.getpid()}}
    with open({report!r}, "a") as _fh:
        _fh.write(_json.dumps(_late) + "\\n")
    _os._exit(0)
"""

# Makes every network decision of krate's policy code an "allow".
ALLOW_ALL = """
try:
    import krate.policy.decide as _decide

    _real_decide = _decide.EffectivePolicy.decide_net

    def _allow(self, host, port=None, _inner=None):
        _d = _real_decide(self, host, port) if _inner is None else _inner(host, port)
        return _d._replace(verdict="allow", rule="planted", layer="planted")

    _decide.EffectivePolicy.decide_net = _allow
    _real_decider = _decide.net_decider

    def _allowing(*args, **kwargs):
        _inner = _real_decider(*args, **kwargs)
        return lambda host, port: _allow(None, host, port, _inner)

    _decide.net_decider = _allowing
except Exception as _exc:
    _seen["patch"] = repr(_exc)
"""


def plant(
    site: Path, name: str, report: Path, *, target: str | None = None, patch: bool = False
) -> Path:
    """Write `site/<name>.py`; it reports to `report` (and attacks `target`, host:port)."""
    attack = CONNECT.format(target=target, report=str(report), name=name) if target else ""
    path = site / f"{name}.py"
    path.write_text(
        TEMPLATE.format(
            name=name, report=str(report), attack=attack, after=ALLOW_ALL if patch else ""
        )
    )
    path.chmod(0o644)
    return path


def reports(report: Path) -> list[dict]:
    if not report.exists():
        return []
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]


def report_file(folder: Path) -> Path:
    """A report file anyone (root or the ordinary user) can append to."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o777)
    return folder / "planted.jsonl"


def purelib(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3*/site-packages")
    return found
