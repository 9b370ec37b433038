"""Concurrency and crash safety of the event chain, with real processes on a real SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from krate.paths import Paths
from krate.store import events, open_store

from .conftest import KRATE, run_krate, wait_for

WORKER = textwrap.dedent(
    """
    import sys
    from krate.paths import Paths
    from krate.store import events, open_store
    home, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open_store(Paths.from_env({"KRATE_HOME": home})) as store:
        for i in range(n):
            events.append(store, "test.concurrent", {"worker": tag, "i": i})
    """
)


def test_sixteen_processes_appending_at_once(krate_home):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(krate_home), str(w), "100"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(16)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, errors
    assert not any("locked" in e for e in errors)
    with open_store(Paths.from_env({"KRATE_HOME": str(krate_home)}), readonly=True) as store:
        rows = events.query(store)
        result = events.verify(store)
    assert len(rows) == 1600
    assert result.ok and result.events == 1600
    per_worker = {}
    for e in rows:
        per_worker.setdefault(e.data["worker"], []).append(e.data["i"])
    # Every worker's events are all there, in the order it appended them.
    assert all(seq == list(range(100)) for seq in per_worker.values())
    assert len(per_worker) == 16


def test_concurrent_cli_notes_never_show_locked(krate_home):
    env = dict(os.environ, KRATE_HOME=str(krate_home))
    procs = [
        subprocess.Popen(
            [
                "sh",
                "-c",
                f'for i in 1 2 3 4 5; do "$0" audit note "p{w} $i" || exit 1; done',
                KRATE,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(8)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    verified = run_krate("audit", "verify", "--json", env=env)
    assert verified.returncode == 0 and '"events": 40' in verified.stdout


def test_sigkill_mid_stream_leaves_a_store_that_opens_and_verifies(krate_home):
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(krate_home), "k", "1000000"])
    db = krate_home / "krate.db"

    def mid_stream() -> bool:
        if not db.exists():
            return False
        with open_store(Paths.from_env({"KRATE_HOME": str(krate_home)}), readonly=True) as s:
            return events.count(s) > 500

    wait_for(mid_stream, 30, "the writer to be mid-stream")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    env = dict(os.environ, KRATE_HOME=str(krate_home))
    verified = run_krate("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert "chain intact" in verified.stdout
    # The store still takes appends after the crash, continuing the chain.
    assert run_krate("audit", "note", "after the crash", env=env).returncode == 0
    assert run_krate("audit", "verify", env=env).returncode == 0
