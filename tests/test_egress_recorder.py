"""The egress recorder against a real stream from a real process and a real store."""

from __future__ import annotations

import json
import subprocess
import sys

from krate.egress import recorder
from krate.paths import Paths
from krate.store import egress as egress_store
from krate.store import open_store


def _decision(n: int, verdict: str = "allow") -> dict:
    return {"type": "decision", "n": n, "protocol": "connect", "host": f"h{n}.example",
            "port": 443, "verdict": verdict, "rule": "r", "layer": "l", "reason": "",
            "address": None, "bytes_up": 1, "bytes_down": 2, "duration_ms": 0.1,
            "started": "2026-01-01T00:00:00.000000Z"}  # fmt: skip


def _proxy(tmp_path, lines: list[dict], tail: bytes = b"") -> subprocess.Popen:
    """A stand-in for the proxy's stdout: the lines, then `tail`, then it exits."""
    data = "".join(json.dumps(x) + "\n" for x in lines).encode() + tail
    (tmp_path / "stream").write_bytes(data)
    script = tmp_path / "proxy.py"
    script.write_text(
        f"import os\ndata = open({str(tmp_path / 'stream')!r}, 'rb').read()\n"
        "while data:\n    data = data[os.write(1, data):]\n"
    )
    return subprocess.Popen([sys.executable, "-I", "-S", str(script)], stdout=subprocess.PIPE)


def test_the_recorder_records_every_line_of_the_stream_in_batches(tmp_path, krate_home):
    paths = Paths(krate_home, krate_home)
    lines = [{"type": "ready", "port": 1}, *(_decision(n) for n in range(1, 451))]
    proc = _proxy(tmp_path, [*lines, {"type": "closed", "connections": 450}], b'{"type": "dec')
    rec = recorder.Recorder(paths, "r1", proc.stdout.fileno())
    rec.start()
    assert proc.wait(timeout=60) == 0
    assert rec.join(60) and rec.error is None
    assert rec.ready_line == {"type": "ready", "port": 1}
    assert rec.closed_line == {"type": "closed", "connections": 450}
    assert rec.counts == {"allow": 450, "deny": 0} and rec.recorded == set(range(1, 451))
    with open_store(paths, readonly=True) as store:
        (host,) = [h for h in egress_store.host_summary(store, "r1") if h["host"] == "h7.example"]
        assert host["connections"] == 1
        assert len(egress_store.host_summary(store, "r1")) == 450


def test_a_recorder_that_cannot_write_still_drains_the_proxy(tmp_path):
    """Its store fails: the proxy must not block on a full pipe (the workload's connections
    would hang); the journal keeps the decisions for close() to record."""
    broken = tmp_path / "not-a-folder"
    broken.write_text("")
    paths = Paths(broken, broken)
    lines = [_decision(n) for n in range(1, 3001)]  # far more than a pipe holds
    proc = _proxy(tmp_path, lines)
    rec = recorder.Recorder(paths, "r1", proc.stdout.fileno())
    rec.start()
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert rec.join(30) and rec.ready.is_set()
    assert rec.error is not None and rec.recorded == set()
    proc.stdout.close()
