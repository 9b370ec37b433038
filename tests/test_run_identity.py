"""Who the workload is when krate runs as root: the workspace's owner, never host root by default.

As root, bubblewrap's sandbox uid is host uid 0, which the kernel's uid checks
trust (sysctls, root-owned files) whatever capabilities were dropped. So a root
krate runs the sandbox as the owner of the workspace, refuses a root-owned one
(125, recorded), and keeps host root only with `--as-root` (recorded). These run
the installed `krate` as root against real bubblewrap.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from .conftest import chown_tree
from .egress_support import Server
from .run_support import SECRET, Box

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap"),
    pytest.mark.skipif(os.geteuid() != 0, reason="krate must run as root"),
]
BURST = Path("/proc/sys/kernel/printk_ratelimit_burst")


@pytest.fixture
def root_box():
    """krate as root, in a workspace root owns, without --as-root."""
    b = Box(None)
    b.as_root = False
    yield b
    b.cleanup()


@pytest.fixture
def owned_box(root_box, ordinary_user):
    """krate as root, in a workspace (and only the workspace) the ordinary user owns."""
    chown_tree(root_box.ws, ordinary_user)
    return root_box


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def test_a_root_owned_workspace_is_refused_and_recorded(root_box):
    burst = BURST.read_text()
    for verb in (["run"], ["build", "--out", "dist"]):
        script = f"echo 11 > {BURST}; mkdir -p dist; id -u > dist/who"
        out = root_box.krate(*verb, "--", "sh", "-c", script)
        assert out.returncode == 125, out
        assert out.stdout == "" and not (root_box.ws / "dist").exists()
        [line] = out.stderr.splitlines()
        assert line.startswith("krate: refusing to run as root: the workspace ")
        assert "belongs to root" in line and "--as-root" in line and "ordinary user" in line
        run = root_box.last_run()
        assert (run["status"], run["exit_code"]) == ("refused", 125)
        [decision] = [d for d in run["decisions"] if d["area"] == "identity"]
        assert (decision["verdict"], decision["layer"]) == ("deny", "builtin")
        assert decision["subject"] == str(root_box.ws)
    assert BURST.read_text() == burst


def test_as_root_runs_as_host_root_and_is_recorded(root_box):
    out = root_box.krate("run", "--as-root", "--", "sh", "-c", "id -u; touch made")
    assert (out.returncode, out.stdout) == (0, "0\n"), out.stderr
    assert (root_box.ws / "made").stat().st_uid == 0
    run = root_box.last_run()
    [decision] = [d for d in run["decisions"] if d["area"] == "identity"]
    assert (decision["verdict"], decision["rule"], decision["layer"]) == (
        "allow", "--as-root", "flags",
    )  # fmt: skip
    [started] = root_box.events("run.started")[-1:]
    assert started["data"]["as_root"] is True and "run_as" not in started["data"]


def test_a_workspace_of_an_ordinary_user_runs_as_that_user(owned_box, ordinary_user):
    uid, gid = _ids(ordinary_user)
    out = owned_box.sh("id -u; id -g; id -G; touch made; mkdir dir; echo 11 > " + str(BURST))
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert out.stdout.split("\n")[:3] == [str(uid), str(gid), str(gid)]
    for name in ("made", "dir"):
        st = (owned_box.ws / name).stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)
    [started] = owned_box.events("run.started")[-1:]
    assert started["data"]["run_as"] == {"user": ordinary_user, "uid": uid, "gid": gid}
    assert "as_root" not in started["data"]
    assert not [d for d in owned_box.last_run()["decisions"] if d["area"] == "identity"]
    shown = owned_box.krate("runs", "show", "last")
    assert f"{ordinary_user} (uid {uid}), the workspace's owner" in shown.stdout


def test_secrets_stay_hidden_when_running_as_the_owner(owned_box, ordinary_user):
    # Root's secret folder made readable to all: only the hiding mount protects it now.
    owned_box.key.parent.chmod(0o755)
    owned_box.key.chmod(0o644)
    # The owner's own secret store is hidden as well, as it would be in the owner's own run.
    owner_home = Path(pwd.getpwnam(ordinary_user).pw_dir)
    own_ssh = owner_home / ".ssh"
    made = not own_ssh.exists()
    if made:
        own_ssh.mkdir(mode=0o700)
        (own_ssh / "id_test").write_text(SECRET + "-own\n")
        chown_tree(own_ssh, ordinary_user)
    try:
        out = owned_box.sh(f"cat {owned_box.key}; cat {own_ssh}/id_test; ls -A {own_ssh}; echo end")
        assert SECRET not in out.stdout and out.stdout.endswith("end\n")
        hidden = owned_box.last_run()["layout"]["hidden"]
        assert str(owned_box.key.parent) in hidden and str(own_ssh) in hidden
    finally:
        if made:
            shutil.rmtree(own_ssh)


def test_a_workspace_its_owner_cannot_reach_is_refused(root_box, ordinary_user):
    root_box.home.chmod(0o700)  # root's; the project inside belongs to the ordinary user
    chown_tree(root_box.ws, ordinary_user)
    out = root_box.sh("true")
    assert out.returncode == 125
    assert "cannot reach" in out.stderr and "--as-root" in out.stderr
    assert root_box.last_run()["status"] == "refused"


def test_a_networked_run_as_the_owner_reaches_the_allowed_host_only(owned_box):
    allowed, other = Server(), Server()
    try:
        script = (
            "id -u; "
            f"curl -sS --max-time 10 http://localhost:{allowed.port}/; "
            f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}\\n' "
            f"http://localhost:{other.port}/"
        )
        out = owned_box.sh(script, "--allow-host", f"localhost:{allowed.port}")
    finally:
        allowed.close()
        other.close()
    lines = out.stdout.splitlines()
    assert lines[:1] == [str(_ids("krate-test")[0])], out
    assert lines[1] == f"hello from {allowed.port}" and lines[2] == "403", out
    run = owned_box.last_run()
    verdicts = {(h["port"], h["verdict"]) for h in run["hosts"]}
    assert verdicts == {(allowed.port, "allow"), (other.port, "deny")}


def test_as_root_does_nothing_for_an_ordinary_user(ordinary_user):
    box = Box(ordinary_user)
    try:
        out = box.krate("run", "--as-root", "--", "id", "-u")
        assert (out.returncode, out.stdout) == (0, f"{_ids(ordinary_user)[0]}\n"), out.stderr
        run = box.last_run()
        assert not [d for d in run["decisions"] if d["area"] == "identity"]
        [started] = box.events("run.started")[-1:]
        assert "as_root" not in started["data"] and "run_as" not in started["data"]
    finally:
        box.cleanup()


def test_the_process_limit_binds_a_root_run_as_the_owner(owned_box):
    owned_box.krate_home.mkdir()
    (owned_box.krate_home / "policy.toml").write_text("[limits]\nprocesses = 4\n")
    out = owned_box.sh("for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait; echo done")
    assert "fork" in out.stderr.lower() or out.returncode != 0, out
