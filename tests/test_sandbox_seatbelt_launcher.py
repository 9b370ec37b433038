"""The Seatbelt backend's launcher, on any platform, with a stand-in `sandbox-exec`.

The stand-in on a temporary path drops `-p PROFILE --` and executes the command,
as `sandbox-exec` does once the profile is applied. This covers what krate's own
code does around it: the workload's exit status (128+N for a signal), the
wall-clock limit, a `sandbox-exec` that cannot start (125, recorded), and the
launch order (nothing starts before run.started is committed; it starts on
release, with and without the egress proxy on its loopback port).

It does not cover what only macOS can show: that the profile is enforced (the
goldens in test_sandbox_seatbelt.py pin its text, and that file executes it on
macOS), how `sandbox-exec` itself fails on a profile it rejects (its exit status
is then taken for the workload's), or macOS's process-group and signal behaviour.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from krate import runs
from krate.cli.policy_load import flags_from, load_effective
from krate.errors import KrateError
from krate.paths import Paths
from krate.sandbox import backend
from krate.sandbox.spec import Limits, build

STAND_IN = '#!/bin/sh\n[ "$1" = "-p" ] && [ "$3" = "--" ] || exit 71\nshift 3\nexec "$@"\n'


@pytest.fixture
def seatbelt(tmp_path):
    exe = tmp_path / "bin" / "sandbox-exec"
    exe.parent.mkdir()
    exe.write_text(STAND_IN)
    exe.chmod(0o755)
    return backend.named("seatbelt", str(exe))


def launch(seatbelt, tmp_path: Path, script: str, limits: Limits | None = None):
    spec = build(argv=("sh", "-c", script), cwd=tmp_path, workspace=tmp_path, allow_write=(),
                 read_only=(), deny_read=(), env={"PATH": os.defpath},
                 limits=limits or Limits())  # fmt: skip
    with seatbelt.open(spec, run_id="r1", data_dir=tmp_path / "data") as sandbox:
        sandbox.start(None)
        assert sandbox.proc is None  # Seatbelt cannot hold: nothing runs before release
        sandbox.release()
        return sandbox.wait()


def test_the_workloads_exit_status_and_signals_are_krates(seatbelt, tmp_path):
    assert seatbelt.capabilities().network == backend.LOOPBACK
    done = launch(seatbelt, tmp_path, "exit 7")
    assert (done.exit_code, done.status, done.started) == (7, "finished", True)
    killed = launch(seatbelt, tmp_path, "kill -TERM $$")
    assert killed.exit_code == 128 + signal.SIGTERM
    tmp = launch(seatbelt, tmp_path, 'case "$TMPDIR" in */run/r1/tmp) exit 0;; esac; exit 1')
    assert tmp.exit_code == 0  # the run's private TMPDIR
    assert not (tmp_path / "data" / "run" / "r1").exists()  # removed after the run


def test_the_wall_clock_limit_kills_the_workload(seatbelt, tmp_path):
    started = time.monotonic()
    out = launch(seatbelt, tmp_path, "sleep 30", Limits(wall_seconds=1))
    assert (out.exit_code, out.status) == (128 + signal.SIGKILL, "timeout")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "loopback-proxy"])
def test_the_workload_starts_only_after_run_started_is_committed(
    seatbelt, tmp_path, monkeypatch, network
):
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    marker = ws / "acted"
    paths = Paths(home, home)
    allow = ["localhost:9"] if network else None
    policy = load_effective(flags_from(None, allow, None, None, not network, None), ws)
    real_start = runs._RunRecord.start
    seen: list[bool] = []

    def observed(record) -> None:
        if record.state == "new":
            time.sleep(0.3)  # a workload started too early would have acted by now
            seen.append(marker.exists())
        real_start(record)

    monkeypatch.setattr(runs._RunRecord, "start", observed)
    script = f'touch {marker}; [ -n "$HTTP_PROXY" ] && exit 3; exit 0'
    request = runs.RunRequest(("sh", "-c", script), ws, ws, {"PATH": os.defpath}, as_root=True)
    result = runs.execute(paths, policy, request, backend=seatbelt)
    assert seen == [False] and marker.exists()
    assert result.exit_code == (3 if network else 0)
    [row] = runs.list_runs(paths)
    assert (row.backend, row.status, row.exit_code) == ("seatbelt", "finished", result.exit_code)


def test_a_sandbox_exec_that_cannot_start_fails_the_run_with_125(seatbelt, tmp_path):
    Path(seatbelt.executable).chmod(0o644)
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    paths = Paths(home, home)
    policy = load_effective(flags_from(None, None, None, None, True, None), ws)
    request = runs.RunRequest(("sh", "-c", f"touch {ws}/acted"), ws, ws, {"PATH": os.defpath},
                              as_root=True)  # fmt: skip
    with pytest.raises(KrateError) as failed:
        runs.execute(paths, policy, request, backend=seatbelt)
    assert failed.value.exit_code == 125 and "cannot start the sandbox" in str(failed.value)
    assert not (ws / "acted").exists()
    [row] = runs.list_runs(paths)
    assert (row.status, row.exit_code) == ("failed", 125)
