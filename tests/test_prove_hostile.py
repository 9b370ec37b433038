"""`krate audit network --prove` fails on hostile variants of the helpers and the start-up.

Against an installed krate, tampered the way an attacker with write access to the
environment would: a `.pyc` rewritten behind its unchanged source (original
header, so Python runs it) that acts only while Seccomp is 0; an egress proxy
that puts site-packages on its path; krate code that loads a third-party module
and forks a child before the lockdown. Each must turn its own layer of the proof
to "disagrees", naming what it found.
"""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from krate.netguard.proof import lines

from .conftest import as_root
from .plant_support import purelib

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp lockdown"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap"),
]
TAG = sys.implementation.cache_tag

ACTS_WHEN_UNLOCKED = """
def _planted():
    with open("/proc/self/status") as fh:
        mode = [line.split()[1] for line in fh if line.startswith("Seccomp:")][0]
    if mode == "0":
        with open({marker!r}, "a") as out:
            out.write("ran unlocked\\n")


_planted()
"""


def tamper_bytecode(source: Path, extra: str) -> Path:
    """Rewrite source's cached bytecode with extra code, keeping the header Python checks."""
    pyc = source.parent / "__pycache__" / f"{source.stem}.{TAG}.pyc"
    header = pyc.read_bytes()[:16]
    code = compile(source.read_text() + extra, str(source), "exec", dont_inherit=True)
    pyc.write_bytes(header + marshal.dumps(code))
    return pyc


@pytest.fixture
def tampered(installed, tmp_path):
    """The installed krate, tampered three ways; restored afterwards."""
    site = purelib(installed)
    marker = tmp_path / "marker"
    saved = {}
    for rel in ("krate/cli/main.py", "krate/egress/proxy.py"):
        saved[site / rel] = (site / rel).read_bytes()
    fastrun = site / "krate/cli/fastrun.py"
    pyc = fastrun.parent / "__pycache__" / f"fastrun.{TAG}.pyc"
    saved[pyc] = pyc.read_bytes()
    try:
        tamper_bytecode(fastrun, ACTS_WHEN_UNLOCKED.format(marker=str(marker)))
        future = b"from __future__ import annotations\n"
        proxy = site / "krate/egress/proxy.py"
        proxy.write_bytes(
            saved[proxy].replace(
                future, future + f"import sys; sys.path.insert(0, {str(site)!r})\n".encode(), 1
            )
        )
        main = site / "krate/cli/main.py"
        early = (
            b"import platformdirs  # third-party code before the lockdown\n"
            b"if os.fork() == 0:  # a child that outlives the lockdown\n"
            b"    __import__('time').sleep(1)\n"
            b"    os._exit(0)\n"
        )
        main.write_bytes(saved[main].replace(b"\nimport sys\n", b"\nimport sys\n" + early, 1))
        yield installed, marker, pyc
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


def test_prove_fails_on_tampered_bytecode_a_hostile_helper_and_early_third_party_code(
    tampered, tmp_path
):
    venv, marker, pyc = tampered
    ws = tmp_path / "ws"
    ws.mkdir()
    env = dict(os.environ, KRATE_HOME=str(tmp_path / "krate-home"))
    krate = str(venv / "bin" / "krate")
    run = subprocess.run([krate, *as_root(["run", "--no-network"]), "--", "true"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert marker.read_text() == "ran unlocked\n"  # the planted bytecode did run (not caught)

    done = subprocess.run([krate, "audit", "network", "--prove", "--json"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1, done.stderr
    proof = json.loads(done.stdout)
    assert proof["verdict"] == "failed" and proof["proven"] is False
    layers = proof["layers"]

    bytecode = layers["bytecode"]
    assert bytecode["checked"] and not bytecode["agrees"]
    assert {d["file"] for d in bytecode["differ"]} == {str(pyc)}

    helpers = layers["helpers"]
    assert helpers["checked"] and not helpers["agrees"]
    proxy = helpers["helpers"]["egress proxy"]
    assert not proxy["ok"] and proxy["foreign_path"] == [str(purelib(venv))]
    assert helpers["helpers"]["registry transport"]["ok"]

    startup = layers["startup"]
    assert not startup["agrees"]
    early = startup["third_party_while_unlocked"]
    assert any(c["process"] == "krate" and "/platformdirs/" in c["path"] for c in early), early
    assert {o["program"] for o in startup["outlived_lockdown"]} == {"a fork of krate"}
    assert "info" in {o["command"] for o in startup["outlived_lockdown"]}
    text = "\n".join(lines(proof))  # what `krate audit network --prove` prints
    assert text.startswith("FAILED:")
    assert f"{pyc}: differs from a fresh compile of its source" in text
    assert "outlived it" in text and "not the standard library or krate's copy" in text
