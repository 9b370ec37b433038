"""The parent side of a helper process, against real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from krate import helper_process


def helper(tmp_path, code: str) -> subprocess.Popen:
    """A real helper started as krate starts them (`python -I -S script`)."""
    script = tmp_path / "helper.py"
    script.write_text(code)
    return helper_process.spawn(sys.executable, script, env={"PATH": os.defpath})


def reader_of(proc: subprocess.Popen, **kw) -> tuple[helper_process.LineReader, list, list]:
    lines: list[bytes] = []
    torn: list[bytes] = []
    reader = helper_process.LineReader(
        proc.stdout.fileno(), lines.append, name="test-reader", on_torn=torn.append, **kw
    )
    return reader.start(), lines, torn


def test_the_helper_is_isolated_and_gets_only_the_environment_given(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("KRATE_SECRET", "s3cret")
    (tmp_path / "json.py").write_text("raise SystemExit('a planted json.py ran')\n")
    proc = helper(
        tmp_path,
        "import json, os, sys\n"
        "print(json.dumps([sorted(os.environ), sys.flags.isolated, sys.flags.no_site]))\n",
    )
    reader, lines, torn = reader_of(proc)
    assert helper_process.stop(proc, 30, reader) == 0
    import json

    env_names, isolated, no_site = json.loads(lines[0])
    assert isolated == 1 and no_site == 1
    assert "KRATE_SECRET" not in env_names and "PYTHONPATH" not in env_names
    assert torn == [] and reader.error is None


def test_a_helper_that_dies_mid_line_leaves_its_whole_lines_and_the_torn_one(tmp_path):
    proc = helper(
        tmp_path,
        'import os\nos.write(1, b\'{"n": 1}\\n{"n": 2}\\n{"n": 3, "ho\')\nos._exit(3)\n',
    )
    reader, lines, torn = reader_of(proc)
    assert helper_process.stop(proc, 30, reader) == 3
    assert lines == [b'{"n": 1}', b'{"n": 2}']
    assert torn == [b'{"n": 3, "ho']
    assert proc.stdout.closed and reader.error is None


def test_a_torn_line_is_dropped_when_the_caller_wants_whole_lines_only(tmp_path):
    proc = helper(tmp_path, "import os\nos.write(1, b'a\\nb')\n")
    lines: list[bytes] = []
    reader = helper_process.LineReader(proc.stdout.fileno(), lines.append, name="t").start()
    helper_process.stop(proc, 30, reader)
    assert lines == [b"a"]


def test_a_helper_that_never_writes_is_waited_for_then_killed(tmp_path):
    proc = helper(tmp_path, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "time.sleep(120)\n")  # fmt: skip
    ticks = []
    reader, lines, torn = reader_of(proc, wait=lambda: 0.05, on_wait=lambda: ticks.append(1))
    assert reader.join(0.5) is False  # still open: the caller decides what that means
    assert reader.alive and len(ticks) >= 3  # the timer ran while nothing came
    started = time.monotonic()
    code = helper_process.stop(proc, 1, reader)  # stdin closed, ignored: killed after 1 s
    assert code == -9 and time.monotonic() - started < 30
    assert not reader.alive and lines == [] and torn == []
    assert proc.stdout.closed and proc.stdin.closed


def test_closing_while_it_writes_ends_the_reader_cleanly_with_whole_lines_only(tmp_path):
    proc = helper(
        tmp_path,
        "import sys\nn = 0\nwhile True:\n"
        "    n += 1\n    sys.stdout.write(f'line {n:08d} ' + 'x' * 100 + '\\n')\n",
    )
    reader, lines, torn = reader_of(proc)
    deadline = time.monotonic() + 30
    while len(lines) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper_process.stop(proc, 5, reader, kill=True) == -9
    assert not reader.alive and reader.error is None
    assert len(lines) >= 1000
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(1, len(lines) + 1))  # nothing lost, reordered or split
    assert all(line.endswith(b"x" * 100) for line in lines)
    assert len(torn) <= 1 and proc.stdout.closed


def test_a_failing_callback_is_reported_and_the_helper_is_not_blocked(tmp_path):
    """Far more than a pipe holds: the helper finishes because the reader still drains."""
    proc = helper(tmp_path, "import sys\nfor n in range(20000):\n    print('x' * 100)\n")
    calls = []

    def broken(raw: bytes) -> None:
        calls.append(raw)
        raise RuntimeError("the store is gone")

    ended = threading.Event()
    reader = helper_process.LineReader(
        proc.stdout.fileno(), broken, name="t", on_end=ended.set
    ).start()
    assert proc.wait(timeout=60) == 0
    assert reader.join(30) and ended.is_set()
    assert len(calls) == 1 and isinstance(reader.error, RuntimeError)


def test_the_stream_is_not_closed_under_a_reader_still_in_it(tmp_path):
    """A grandchild keeps the pipe open: the helper is gone, but its stream is not closed."""
    proc = helper(
        tmp_path,
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'])\n"
        "print('bye', flush=True)\n",
    )
    reader, lines, _ = reader_of(proc)
    assert helper_process.stop(proc, 0.5, reader) == 0
    assert reader.alive and not proc.stdout.closed  # closing it now could hit a reused fd
    assert reader.join(30) and lines == [b"bye"]


def test_a_helper_that_cannot_start_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        helper_process.spawn(str(tmp_path / "no-python"), tmp_path / "x.py", env={})


def test_wait_is_popens_wait_woken_by_the_exit():
    """krate waits for its egress proxy at the end of every networked run; Popen's wait with
    a timeout sleeps 0.5, 1, 2, 4 ... ms between polls, helper_process.wait wakes at the exit
    (a pidfd): same status, same TimeoutExpired, and a child reaped already is Popen's."""
    from krate.helper_process import wait

    quick = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert wait(quick, 30.0) == 7 and quick.returncode == 7
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            wait(slow, 0.2)
        assert time.monotonic() - start >= 0.19
    finally:
        slow.kill()
    start = time.monotonic()
    assert wait(slow, 30.0) == -9
    assert time.monotonic() - start < 5.0
    assert wait(slow, 0.01) == -9  # reaped already
