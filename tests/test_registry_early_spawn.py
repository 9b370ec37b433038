"""registry/early.py starts the transport with fork and exec instead of subprocess (whose
imports came first on every pull's path): the child must get what Popen(close_fds=True)
gave it — its three pipes, no other descriptor of krate's, only the environment named —
and krate must see a failed exec, a hung child and a kill as Popen reported them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from krate import helper_process
from krate.registry import early

SHOW = (
    "import json, os, sys\n"
    "line = sys.stdin.readline()\n"
    "open_fds = []\n"
    "for fd in range(3, 256):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "    except OSError:\n"
    "        continue\n"
    "    open_fds.append(fd)\n"
    "print(json.dumps({'line': line, 'fds': open_fds, 'env': dict(os.environ)}))\n"
    "print('to stderr', file=sys.stderr)\n"
)


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_the_child_gets_its_pipes_and_no_other_descriptor_or_variable(
    tmp_path, monkeypatch, listed
):
    """With krate's descriptors listed (/proc/self/fd, /dev/fd) the child closes those an
    exec would pass on; without a listing, every number above 2."""
    if not listed:
        monkeypatch.setattr(early, "_inheritable", lambda: None)
    leaked = os.open(tmp_path, os.O_RDONLY)  # inheritable: Popen(close_fds) closed it too
    os.set_inheritable(leaked, True)
    monkeypatch.setenv("KRATE_SECRETISH", "must-not-pass")
    try:
        proc = early.spawn([sys.executable, "-I", "-S", "-c", SHOW], {"ONLY": "this"})
    finally:
        os.close(leaked)
    proc.stdin.write(b"the job\n")
    proc.stdin.close()
    out = json.loads(proc.stdout.read())
    err = proc.stderr.read()
    assert proc.wait() == 0 and proc.returncode == 0 and proc.poll() == 0
    assert out["line"] == "the job\n"
    assert out["fds"] == []
    assert {k: v for k, v in out["env"].items() if k != "LC_CTYPE"} == {"ONLY": "this"}
    assert err == b"to stderr\n"
    proc.stdout.close()
    proc.stderr.close()


def test_a_failed_exec_is_raised_as_popen_raises_it(tmp_path):
    missing = str(tmp_path / "no-python")
    with pytest.raises(OSError) as caught:
        early.spawn([missing, "-I", "-S", "x.py"], {})
    assert caught.value.errno == 2 and missing in str(caught.value)


def test_a_hung_child_times_out_and_is_killed_as_helper_process_expects():
    proc = early.spawn([sys.executable, "-I", "-S", "-c", "import time; time.sleep(60)"], {})
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        helper_process.wait(proc, 0.2)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(5) == -9 and time.monotonic() - start < 5
    proc.kill()  # again, once it is gone: nothing to do
    assert helper_process.stop(proc, 1) == -9 and proc.stdout.closed and proc.stderr.closed


def test_the_transport_taken_over_still_does_its_job():
    """The `report` job through the fork-started transport, as `krate image pull` takes it."""
    early.start(["image", "pull", "localhost:5000/me/app:1"])
    transport = early.take()
    assert isinstance(transport, early.Spawned) and transport.args[-1] == early.TLS_LATER
    transport.stdin.write(b'{"op": "report"}\n')
    transport.stdin.close()
    done = json.loads(transport.stdout.read().splitlines()[-1])
    assert done["type"] == "done" and transport.wait() == 0
    assert done["python"]["path"] and not any("site-packages" in p for p in done["python"]["path"])
    transport.stdout.close()
    transport.stderr.close()
