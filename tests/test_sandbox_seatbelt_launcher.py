"""The Seatbelt backend's launcher, on any platform, with a stand-in `sandbox-exec`.

The stand-in on a temporary path drops `-p PROFILE --` and executes the command,
as `sandbox-exec` does once the profile is applied. This covers what krate's own
code does around it: the workload's exit status (128+N for a signal), the
wall-clock limit, a `sandbox-exec` that cannot start (125, recorded), the launch
order (nothing starts before run.started is committed; it starts on release, with
and without the egress proxy on its loopback port), the working folder
(`--workdir`), sandbox-exec's own 65/71 told apart from a workload's 65/71 by the
launcher's pipe, and limits refused before the workload starts.

It does not cover what only macOS can show: that the profile is enforced (the
goldens in test_sandbox_seatbelt.py pin its text, and that file executes it on
macOS), what the real sandbox-exec prints and exits with when it rejects a profile
or is nested (the stand-in imitates the documented 65/71 and its `sandbox-exec:`
line), that krate's Python starts inside the real profile, whether macOS refuses
a given RLIMIT_DATA (forced here by a patched setrlimit), or macOS's
process-group and signal behaviour.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from krate import runs
from krate.cli.policy_load import flags_from, load_effective
from krate.errors import KrateError
from krate.paths import Paths
from krate.sandbox import backend, backend_seatbelt, limits, supervise
from krate.sandbox.spec import Limits, build

STAND_IN = '#!/bin/sh\n[ "$1" = "-p" ] && [ "$3" = "--" ] || exit 71\nshift 3\nexec "$@"\n'
# sandbox-exec refusing the profile (65) or a nested sandbox (71): its line, then its status.
REFUSING = (
    '#!/bin/sh\necho "sandbox-exec: sandbox_apply: Operation not permitted" >&2\nexit {code}\n'
)


@pytest.fixture
def seatbelt(tmp_path):
    exe = tmp_path / "bin" / "sandbox-exec"
    exe.parent.mkdir()
    exe.write_text(STAND_IN)
    exe.chmod(0o755)
    return backend.named("seatbelt", str(exe))


def launch(seatbelt, tmp_path: Path, script: str, limits: Limits | None = None,
           cwd: Path | None = None):  # fmt: skip
    spec = build(argv=("sh", "-c", script), cwd=cwd or tmp_path, workspace=tmp_path,
                 allow_write=(), read_only=(), deny_read=(), env={"PATH": os.defpath},
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


def test_the_workload_starts_in_the_working_folder(seatbelt, tmp_path):
    """`--workdir`: the spec's cwd, not krate's own folder."""
    sub = tmp_path / "sub"
    sub.mkdir()
    script = f'[ "$(pwd -P)" = "{os.path.realpath(sub)}" ] && exit 0; exit 9'
    assert launch(seatbelt, tmp_path, script, cwd=sub).exit_code == 0


def run_refused(exe: Path, tmp_path: Path, script: str):
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir(parents=True)
    paths = Paths(home, home)
    policy = load_effective(flags_from(None, None, None, None, True, None), ws)
    request = runs.RunRequest(("sh", "-c", script), ws, ws, {"PATH": os.defpath}, as_root=True)
    result = runs.execute(paths, policy, request, backend=backend.named("seatbelt", str(exe)))
    [row] = runs.list_runs(paths)
    return result, row


@pytest.mark.parametrize("code", [65, 71])
def test_sandbox_exec_failing_is_125_and_a_workload_exiting_65_or_71_is_its_own(
    seatbelt, tmp_path, code
):
    """sandbox-exec's own 65/71 (a rejected profile, a nested sandbox) is 125, recorded."""
    refusing = tmp_path / "refusing" / "sandbox-exec"
    refusing.parent.mkdir()
    refusing.write_text(REFUSING.format(code=code))
    refusing.chmod(0o755)
    result, row = run_refused(refusing, tmp_path, f"exit {code}")
    assert (result.exit_code, result.status) == (125, "failed")
    assert "sandbox-exec failed before the workload started" in result.reason
    assert "\n" not in result.reason
    assert (row.status, row.exit_code) == ("failed", 125)
    own, row = run_refused(Path(seatbelt.executable), tmp_path / "own", f"exit {code}")
    assert (own.exit_code, own.status, row.exit_code) == (code, "finished", code)


def test_a_path_too_long_for_the_profile_is_125_before_anything_starts(seatbelt, tmp_path):
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    deep = tmp_path.joinpath(*["d" * 200] * 6)
    deep.mkdir(parents=True)
    paths = Paths(home, home)
    policy = load_effective(flags_from(None, None, [str(deep)], None, True, None), ws)
    request = runs.RunRequest(("sh", "-c", f"touch {ws}/acted"), ws, ws, {"PATH": os.defpath},
                              as_root=True)  # fmt: skip
    with pytest.raises(KrateError) as failed:
        runs.execute(paths, policy, request, backend=seatbelt)
    assert failed.value.exit_code == 125
    assert str(failed.value).startswith("cannot build the Seatbelt profile: path too long")
    assert not (ws / "acted").exists()
    [row] = runs.list_runs(paths)
    assert (row.status, row.exit_code) == ("failed", 125)


def test_a_memory_limit_the_system_refuses_is_125_naming_it(seatbelt, tmp_path, monkeypatch):
    """RLIMIT_DATA refused (EINVAL, as macOS may): 125 before the workload, not a run without it.

    The launcher is the real one in a real child, with setrlimit patched to fail there.
    """
    patch = (
        "import resource\n"
        "def refuse(*a):\n    raise OSError(22, 'Invalid argument')\n"
        "resource.setrlimit = refuse\n"
    )
    monkeypatch.setattr(backend_seatbelt, "LAUNCHER", patch + backend_seatbelt.LAUNCHER)
    marker = tmp_path / "acted"
    out = launch(seatbelt, tmp_path, f"touch {marker}", Limits(memory_mb=512))
    assert (out.exit_code, out.status, out.started) == (125, "failed", False)
    assert out.reason.startswith("the system refused limits.memory_mb (RLIMIT_DATA)")
    assert "Invalid argument" in out.reason and not marker.exists()


def test_limits_apply_to_the_workload(seatbelt, tmp_path):
    out = launch(seatbelt, tmp_path, '[ "$(ulimit -t)" = 5 ] && exit 0; exit 4',
                 Limits(cpu_seconds=5))  # fmt: skip
    assert out.exit_code == 0


def test_a_process_limit_is_refused_on_seatbelt(seatbelt, tmp_path):
    """macOS counts RLIMIT_NPROC per user and has no prlimit: refused, not skipped."""
    with pytest.raises(KrateError) as refused:
        launch(seatbelt, tmp_path, "exit 0", Limits(processes=64))
    assert refused.value.exit_code == 125 and "limits.processes" in str(refused.value)
    assert "util-linux" not in str(refused.value)


def test_a_refused_rlimit_in_the_launcher_child_is_a_one_line_125(tmp_path, monkeypatch):
    """Any backend's preexec child: setrlimit failing there (EINVAL) is 125, not a traceback.

    A real forked child runs limits.preexec with setrlimit patched to fail.
    """

    def refuse(*_args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(limits.resource, "setrlimit", refuse)

    class Plain(supervise.Launcher):
        def command(self, fds):
            return ["/bin/sh", "-c", f"touch {tmp_path}/acted"]

    launcher = Plain({}, preexec=limits.preexec(Limits(memory_mb=256)))
    with launcher, pytest.raises(KrateError) as failed:
        launcher.release()
    assert failed.value.exit_code == 125 and "\n" not in str(failed.value)
    assert "limits" in str(failed.value) and not (tmp_path / "acted").exists()


def test_the_launcher_leaves_argv_and_environment_exactly_as_given(seatbelt, tmp_path, capfd):
    """The workload gets its argv and environment unchanged: no LC_CTYPE from Python's
    locale coercion (PEP 538), no SHLVL, PWD or `_` (what a shell launcher would add)."""
    exact = seatbelt.executable + "-exact"  # the stand-in without sh's own PWD
    Path(exact).write_text('#!/bin/sh\nshift 3\nexec env -u PWD "$@"\n')
    Path(exact).chmod(0o755)
    exact_backend = backend.named("seatbelt", exact)

    def output(argv: tuple[str, ...], env: dict[str, str]) -> str:
        spec = build(argv=argv, cwd=tmp_path, workspace=tmp_path, allow_write=(), read_only=(),
                     deny_read=(), env=env)  # fmt: skip
        capfd.readouterr()
        with exact_backend.open(spec, run_id="r2", data_dir=tmp_path / "data") as sandbox:
            sandbox.start(None)
            sandbox.release()
            assert sandbox.wait().exit_code == 0
        return capfd.readouterr().out

    printf = shutil.which("printf")
    assert output((printf, "[%s]\\n", "two words", ""), {}) == "[two words]\n[]\n"
    for env in ({"PATH": os.defpath, "KEEP": "x y"}, {"PATH": os.defpath, "LC_CTYPE": "C"}):
        seen = dict(line.split("=", 1) for line in output(("/usr/bin/env",), env).splitlines())
        assert seen == {**env, "TMPDIR": seen["TMPDIR"]}
