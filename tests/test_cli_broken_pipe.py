"""A broken pipe is "the reader went away" only when it is stdout's (`krate ... | head`).

A broken pipe to one of krate's own helpers (the egress bridge's "go", the proxy)
is a failure of krate's: never a quiet exit 0.
"""

from __future__ import annotations

import contextlib
import os


def test_a_closed_stdout_is_the_reader_going_away(monkeypatch, capsys):
    """stdout is a pipe whose reader is gone (`| head`): exit 0, nothing said."""
    from krate.cli import main, workload

    read, write = os.pipe()
    os.close(read)
    stdout = os.fdopen(write, "w")
    monkeypatch.setattr("sys.stdout", stdout)

    def printing(_options):
        for _ in range(10000):
            stdout.write("a line of output\n")
        stdout.flush()
        return 0

    monkeypatch.setattr(workload, "run_workload", printing)
    try:
        assert main.main(["run", "--as-root", "--", "true"], protect=False) == 0
    finally:
        with contextlib.suppress(OSError):
            stdout.close()
    assert capsys.readouterr().err == ""


def test_a_broken_helper_pipe_is_a_failure_not_exit_0(monkeypatch, capsys):
    """stdout is fine; a pipe krate writes to a helper broke: run fails with 125, one line."""
    from krate.cli import main, workload

    def broken(_options):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(workload, "run_workload", broken)
    code = main.main(["run", "--as-root", "--", "true"], protect=False)
    err = capsys.readouterr().err
    assert code == 125, err
    assert err.startswith("krate: internal error: BrokenPipeError") and err.count("\n") == 1
