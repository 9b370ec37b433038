"""`krate run` end to end: pass-through, exit statuses, silence, records, `krate runs`."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import time

import pytest

from .conftest import AS_ROOT, KRATE
from .run_support import SECRET, Box

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


@pytest.fixture
def box():
    b = Box(None)
    yield b
    b.cleanup()


def test_success_is_silent_and_the_status_is_the_workloads(box):
    out = box.sh("echo out; echo err >&2; exit 0")
    assert (out.returncode, out.stdout, out.stderr) == (0, "out\n", "err\n")
    for code in (1, 3, 42, 125, 255):
        assert box.sh(f"exit {code}").returncode == code


def test_killed_by_a_signal_gives_128_plus_n(box):
    assert box.sh("kill -TERM $$").returncode == 128 + signal.SIGTERM
    assert box.sh("kill -KILL $$").returncode == 128 + signal.SIGKILL


def test_verbose_says_what_krate_did(box):
    out = box.krate("run", "-v", "--", "true", env=box.env(GITHUB_TOKEN="t0k"))
    assert out.returncode == 0 and out.stdout == ""
    assert "krate: run " in out.stderr and "GITHUB_TOKEN" in out.stderr and "t0k" not in out.stderr


def test_126_127_checked_in_the_sandboxs_view(box):
    out = box.krate("run", "--", "no-such-command-xyz")
    assert out.returncode == 127 and "not found" in out.stderr
    assert box.krate("run", "--", "./README").returncode == 126
    # a program under a hidden folder is not there for the workload
    tool = box.home / ".ssh" / "tool"
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    out = box.krate("run", "--", str(tool))
    assert out.returncode == 127 and "ran" not in out.stdout
    run = box.last_run()
    assert run["status"] == "failed" and run["exit_code"] == 127


def test_missing_bubblewrap_is_125_with_the_install_command(box, tmp_path):
    out = box.krate("run", "--", "true", env=box.env(PATH=str(tmp_path)))
    assert out.returncode == 125
    assert "apt-get install bubblewrap" in out.stderr and "dnf install bubblewrap" in out.stderr


def test_usage_error_without_a_command(box):
    assert box.krate("run").returncode == 2


def test_binary_stdin_stdout_pass_through_untouched(box):
    data = os.urandom(8 << 20) + bytes(range(256)) * 100
    out = subprocess.run(
        [KRATE, "run", *AS_ROOT, "--", "cat"], input=data, capture_output=True, env=box.env(),
        cwd=box.ws, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data).digest()
    assert out.stderr == b""


def test_pipelines_and_closed_stdout(box):
    cmd = f"{KRATE} run {' '.join(AS_ROOT)} -- sh -c 'seq 1 100000' | head -3"
    out = subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, env=box.env(), cwd=box.ws
    )
    assert out.stdout == "1\n2\n3\n"


def test_a_tty_passes_through(box):
    pid, fd = pty.fork()
    if pid == 0:  # child: krate with the pty as stdin/stdout/stderr
        os.chdir(box.ws)
        script = "test -t 0 && test -t 1 && echo on-a-tty"
        os.execve(KRATE, [KRATE, "run", *AS_ROOT, "--", "sh", "-c", script], box.env())
    output = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"on-a-tty" in output


def test_private_tmpdir_exists_and_leaves_nothing(box):
    marker = f"krate-test-{os.getpid()}-{time.time_ns()}"
    out = box.sh(f'echo "$TMPDIR"; f=$(mktemp) && echo ok > "$f" && cat "$f"; touch /tmp/{marker}')
    assert out.returncode == 0 and out.stdout == "/tmp\nok\n"
    assert not os.path.exists(f"/tmp/{marker}")


def test_records_and_runs_commands(box):
    env = box.env(GITHUB_TOKEN="ghp_" + "x" * 36, AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI", OK="1")
    out = box.krate("run", "--", "sh", "-c", "exit 7", "--token=hunter2", env=env)
    assert out.returncode == 7
    run = box.last_run()
    assert run["exit_code"] == 7 and run["status"] == "finished"
    assert run["argv"] == ["sh", "-c", "exit 7", "--token=***"]
    assert run["cwd"] == str(box.ws) and run["backend"] == "bubblewrap"
    assert run["policy_name"] and len(run["policy_hash"]) == 64
    assert run["started"] <= run["finished"] and run["duration_s"] >= 0
    stripped = {d["subject"] for d in run["decisions"] if d["area"] == "env"}
    assert {"GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"} <= stripped and "OK" not in stripped
    assert run["decision_counts"]["denied"] >= 2
    assert str(box.home / ".ssh") in run["layout"]["hidden"]
    # the store never holds a value or the redacted flag value
    raw = (box.krate_home / "krate.db").read_bytes()
    for secret in ("hunter2", "wJalrXUtnFEMI", "x" * 36):
        assert secret.encode() not in raw
    kinds = [e["kind"] for e in box.events() if e["run_id"] == run["id"]]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert "policy.decision" in kinds

    listed = json.loads(box.krate("runs", "list", "--json").stdout)
    assert listed[0]["id"] == run["id"]
    again = json.loads(box.krate("runs", "show", run["id"][:12], "--json").stdout)
    assert again["id"] == run["id"]
    table = box.krate("runs", "list")
    assert run["id"] in table.stdout and "finished" in table.stdout
    shown = box.krate("runs", "show", "last")
    assert "GITHUB_TOKEN" in shown.stdout and "ghp_" not in shown.stdout
    assert box.krate("runs", "show", "zzzz").returncode == 1
    assert box.krate("audit", "verify").returncode == 0


def test_runs_list_empty_and_ids_sort_by_time(box):
    assert json.loads(box.krate("runs", "list", "--json").stdout) == []
    assert box.krate("runs", "show", "last").returncode == 1
    for _ in range(3):
        box.krate("run", "--", "true")
    listed = json.loads(box.krate("runs", "list", "--json", "--limit", "2").stdout)
    assert len(listed) == 2 and listed[0]["id"] > listed[1]["id"]


def test_run_ids_are_short_and_sortable():
    from krate.runs import new_run_id

    a, b = new_run_id(1_700_000_000_000, 0), new_run_id(1_700_000_000_001, 2**30 - 1)
    assert len(a) == 16 and a < b and a.isalnum() and a == a.lower()


def test_stale_leftover_folder_is_cleaned_at_next_start(box):
    stale = box.krate_home / "run" / "01old"
    stale.mkdir(parents=True)
    (stale / "owner").write_text("999999 -\n")
    (stale / "junk").write_text("x")
    assert box.krate("run", "--", "true").returncode == 0
    assert not stale.exists()
    assert SECRET not in (box.krate_home / "krate.db").read_text(errors="ignore")


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "bridge"])
def test_ctrl_c_while_the_run_starts_is_recorded_as_interrupted(tmp_path, network):
    """A KeyboardInterrupt before the launcher forwards signals: krate exits 130, and the
    record says interrupted with 130 (not a krate failure)."""
    from krate.cli.policy_load import flags_from, load_effective
    from krate.paths import Paths
    from krate.runs import RunRequest, execute, list_runs

    ws = tmp_path / "ws"
    ws.mkdir()
    paths = Paths(tmp_path / "home", tmp_path / "home")
    flags = flags_from(None, ["localhost:9"] if network else None, None, None, not network, None)

    def interrupt() -> None:
        raise KeyboardInterrupt

    request = RunRequest(
        ("sleep", "30"), ws, ws, {"PATH": os.defpath}, as_root=True, lock_down=interrupt
    )
    with pytest.raises(KeyboardInterrupt):
        execute(paths, load_effective(flags, ws), request)
    [row] = list_runs(paths)
    assert (row.status, row.exit_code) == ("interrupted", 130)
