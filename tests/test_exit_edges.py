"""Edges of krate's own exit status and error paths.

Each test reproduces a case that could exit wrongly or fail with an internal
error: a network refusal after main() returned, and others below.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import subprocess

import pytest

from .conftest import KRATE, run_krate
from .run_support import BASE_PATH, Box
from .test_netguard_guard import _plugin

LATE_THREAD = (
    "import threading\n"
    "    def late():\n"
    "        while threading.main_thread().is_alive():\n"  # until main() has returned
    "            threading.Event().wait(0.01)\n"
    "        socket.getaddrinfo('telemetry.example.com', 443)\n"
    "    threading.Thread(target=late).start()"
)
LATE_EXIT_HANDLER = (
    "import atexit\n    atexit.register(lambda: socket.getaddrinfo('late.example.com', 443))"
)


def test_a_refusal_after_main_returned_still_exits_1_and_is_recorded(tmp_path, krate_home):
    assert run_krate("audit", "note", "before").returncode == 0
    for body, host in ((LATE_THREAD, "telemetry"), (LATE_EXIT_HANDLER, "late")):
        env = _plugin(tmp_path / host, body)
        result = run_krate("audit", "verify", env=env)
        assert f"socket.getaddrinfo to {host}.example.com:443" in result.stderr, result.stderr
        assert result.returncode == 1, result.stderr
    events = json.loads(run_krate("audit", "list", "--kind", "guard.", "--json").stdout)
    assert [e["data"]["target"] for e in events] == [
        "telemetry.example.com:443",
        "late.example.com:443",
    ]
    assert run_krate("audit", "verify").returncode == 0


def test_a_refusal_after_the_last_settlement_exits_1_at_once(tmp_path, krate_home):
    """An exit handler registered before krate's runs after it: the guard itself exits 1."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, socket\n"
        "atexit.register(lambda: socket.getaddrinfo('last.example.com', 443))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = run_krate("audit", "verify", env=env)
    assert "socket.getaddrinfo to last.example.com:443" in result.stderr
    assert result.returncode == 1, result.stderr


def _in_a_pty(argv: list[str], env: dict, cwd, user: str | None = None) -> tuple[int, str]:
    """Run argv with a new pseudo-terminal as its stdin, stdout and stderr; (status, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            if user:
                entry = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_terminal_modes_changed_inside_are_restored_after_the_run(box):
    """A workload that leaves the terminal raw without echo (exiting, or killed) used to keep it."""
    for ending in ("exit 3", "kill -KILL \\$\\$"):
        inner = f"stty raw -echo; stty -a | grep -o -- '-echo ' ; {ending}"
        run = " ".join(box.args(("run",)))
        script = f'{KRATE} {run} -- sh -c "{inner}"; echo status=$?; stty -a'
        status, out = _in_a_pty(["/bin/sh", "-c", script], box.env(), box.ws, box.user)
        assert status == 0, out
        inside, after = out.split("status=")
        assert "-echo " in inside  # the workload did change the terminal
        assert after.split()[0] in ("3", "137"), out
        modes = after.split()
        assert "echo" in modes and "icanon" in modes and "-echo" not in modes, out


# ---------------------------------------------------------------- 125 before the workload


def test_krates_own_failures_before_the_workload_are_125(box, tmp_path):
    marker = box.ws / "workload-ran"
    bad = box.ws / "bad.toml"
    bad.write_text("[limits]\nmemory_mb = 'lots'\n")
    huge = box.ws / "huge.toml"
    huge.write_text("[limits]\nwall_seconds = 10000000000\n")
    for policy, where in ((bad, f"{bad}:2:"), (huge, f"{huge}:2: `limits.wall_seconds`")):
        for verb in (["run"], ["build", "--out", "dist"]):
            out = box.krate(*verb, "--policy", str(policy), "--", "touch", str(marker))
            assert out.returncode == 125, (verb, out.stderr)
            assert out.stderr.startswith(f"krate: {where}") and out.stderr.count("\n") == 1
            assert not marker.exists()
    # a data folder krate cannot use: a file where the folder should be, or (as a user)
    # a folder it may not write
    homes = [box.base / "a-file" / "krate"]
    (box.base / "a-file").write_text("")
    if box.user:
        locked = box.base / "locked"
        locked.mkdir(mode=0o755)  # root's
        homes.append(locked / "krate")
    for home in homes:
        for verb in (["run"], ["build", "--out", "dist"]):
            env = box.env(KRATE_HOME=str(home))
            out = box.krate(*verb, "--", "touch", str(marker), env=env)
            assert out.returncode == 125, (verb, out.stderr)
            assert "KRATE_HOME" in out.stderr and "internal error" not in out.stderr
            assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tiny file system")
def test_a_full_data_folder_is_125_with_a_clear_message(tmp_path):
    box = Box(None)
    full = box.base / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        marker = box.ws / "workload-ran"
        out = box.krate("run", "--", "touch", str(marker), env=box.env(KRATE_HOME=str(full)))
        assert out.returncode == 125, out.stderr
        assert "disk is full" in out.stderr and "internal error" not in out.stderr
        assert not marker.exists()
        # nothing of the sandbox is left waiting (a setup child of a killed bubblewrap was)
        left = subprocess.run(["pgrep", "-f", str(box.ws)], capture_output=True, text=True)
        assert left.stdout == "", left.stdout
    finally:
        subprocess.run(["umount", str(full)], check=True)
        box.cleanup()


def test_arguments_and_workspaces_that_are_not_utf8_run_and_are_recorded(box):
    """Linux argv and paths are bytes: these used to stop krate with an internal error."""
    ws = box.home / "proj-\udcff"  # b"proj-\xff" on disk
    ws.mkdir()
    if box.user:
        os.chown(ws, *_ids(box.user))
    argv = ["sh", "-c", 'printf "%s|" "$1" "$PWD"; echo ok > "out-$1"', "sh", "arg-\udcfe"]
    kw = {"user": box.user, "group": _ids(box.user)[1], "extra_groups": []} if box.user else {}
    out = subprocess.run(
        [KRATE, *box.args(("run",)), "--", *argv],
        cwd=ws,
        env=box.env(),
        capture_output=True,
        timeout=120,
        **kw,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"arg-\xfe|" + os.fsencode(ws) + b"|"
    assert (ws / "out-arg-\udcfe").read_text() == "ok\n"
    run = box.last_run()  # valid JSON: the undecodable bytes as \xNN
    assert run["argv"][-1] == "arg-\\xfe" and run["cwd"] == f"{box.home}/proj-\\xff"
    assert box.krate("audit", "verify").returncode == 0
    # a build whose output name is not UTF-8 either
    out = box.krate(
        "build", "--out", "dist", "--name", "b-\udcfd", "--",
        "sh", "-c", "mkdir dist && echo x > dist/f-\udcfc", cwd=ws,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = box.krate("builds", "last", "--json")
    assert shown.returncode == 0, shown.stderr
    assert "f-\\\\xfc" in shown.stdout and "b-\\\\xfd" in shown.stdout, shown.stdout
    statement = box.krate("provenance", "f-\\xfc", "--json")
    assert json.loads(statement.stdout)["subject"][0]["name"] == "dist/f-\\xfc", statement.stderr
    assert box.krate("audit", "verify").returncode == 0


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def test_an_unsearchable_path_entry_is_skipped(box):
    """krate's own lookup stopped at a PATH folder it may not search (the shell skips it)."""
    if os.geteuid() == 0 and not box.user:
        pytest.skip("root may search every folder")
    locked = box.base / "locked"
    (locked / "bin").mkdir(parents=True)
    locked.chmod(0o700 if box.user else 0)  # root's, or the user's own without any access
    path = ":".join([str(locked / "bin"), BASE_PATH])
    out = box.krate("run", "--", "echo", "found", env=box.env(PATH=path))
    assert (out.returncode, out.stdout) == (0, "found\n"), out.stderr


def test_read_only_commands_work_on_a_read_only_data_folder(ordinary_user, tmp_path):
    """Reading a WAL database needs a -shm file SQLite could not create there."""
    user = ordinary_user if os.geteuid() == 0 else None
    box = Box(user)
    try:
        assert box.krate("audit", "note", "hello").returncode == 0
        assert box.sh("true").returncode == 0
        for root, dirs, files in os.walk(box.krate_home):
            for name in [*dirs, *files]:
                os.chmod(os.path.join(root, name), 0o500 if name in dirs else 0o400)
        box.krate_home.chmod(0o500)
        for command in (
            ["runs", "list"], ["runs", "show", "last"], ["audit", "list"], ["audit", "verify"],
            ["audit", "network"], ["policy", "show"], ["info"],
        ):  # fmt: skip
            out = box.krate(*command)
            assert out.returncode == 0, (command, out.stderr)
        assert "hello" in box.krate("audit", "list").stdout
    finally:
        box.krate_home.chmod(0o700)
        box.cleanup()
