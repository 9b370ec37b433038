"""What the git guard protects and how placeholders live, without a sandbox.

The attacks themselves run in real sandboxes in test_run_git_guard.py; these pin the
decisions (which names, which folders, which refusals) and the placeholder bookkeeping
(shared by concurrent runs, removed by the last, swept after a crash, never removing
something that is no longer the placeholder).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from krate.policy import Flags, effective_policy
from krate.runs import RunRequest, prepare
from krate.sandbox import backend, bwrap, gitguard, placeholders, seatbelt
from krate.sandbox.placeholders import Pin

from .sbpl import decide, parse

BWRAP_BACKEND = backend.named("bubblewrap", "bwrap")


def repo(path: Path, *names: str) -> Path:
    """A git folder with HEAD, objects, refs and the given names (folders end with /)."""
    gitdir = path / ".git"
    for sub in ("objects", "refs", *[n for n in names if n.endswith("/")]):
        (gitdir / sub).mkdir(parents=True, exist_ok=True)
    (gitdir / "HEAD").write_text("ref: refs/heads/main\n")
    for name in names:
        if not name.endswith("/"):
            (gitdir / name).write_text("[core]\n")
    return gitdir


def test_existing_names_are_read_only_and_missing_ones_pinned(tmp_path):
    gitdir = repo(tmp_path, "config", "hooks/", "info/")
    guard = gitguard.inspect([tmp_path])
    assert set(guard.read_only) == {gitdir / "config", gitdir / "hooks", gitdir / "info"}
    pinned = {p.path.name: p for p in guard.pins}
    assert set(pinned) == {"commondir", "config.worktree", "modules", "worktrees"}
    assert pinned["commondir"].content == b".\n" and not pinned["commondir"].keep
    assert pinned["modules"].keep and pinned["config.worktree"].keep
    assert pinned["modules"].folder and pinned["worktrees"].folder
    assert guard.refusals == () and guard.writable == ()


def test_a_repository_outside_the_writable_folders_is_left_alone(tmp_path):
    repo(tmp_path / "ro", "config")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / ".git").write_text(f"gitdir: {tmp_path / 'ro' / '.git'}\n")
    guard = gitguard.inspect([tmp_path / "ws"])
    assert guard.read_only == (tmp_path / "ws" / ".git",)  # the .git file itself
    assert guard.pins == () and guard.refusals == ()


def test_a_hidden_or_read_only_git_folder_needs_nothing(tmp_path):
    repo(tmp_path, "config")
    assert gitguard.inspect([tmp_path], read_only=[tmp_path / ".git"]).pins == ()
    assert gitguard.inspect([tmp_path], hidden=[tmp_path]).pins == ()


def test_a_linked_worktree_folder_is_writable_with_its_own_names_read_only(tmp_path):
    main = repo(tmp_path / "main", "config", "hooks/", "worktrees/")
    wt_dir = main / "worktrees" / "wt"
    wt_dir.mkdir()
    (wt_dir / "commondir").write_text("../..\n")
    (wt_dir / "gitdir").write_text(f"{tmp_path / 'wt' / '.git'}\n")
    (wt_dir / "HEAD").write_text("ref: refs/heads/wt\n")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {wt_dir}\n")
    # the main repository's folder is writable too (an allow_write path)
    guard = gitguard.inspect([tmp_path / "wt", tmp_path / "main"])
    assert guard.writable == (wt_dir,)
    assert {tmp_path / "wt" / ".git", wt_dir / "commondir", wt_dir / "gitdir"} <= set(
        guard.read_only
    )
    assert {main / "config", main / "hooks", main / "worktrees"} <= set(guard.read_only)
    # the worktree's folder has only config.worktree of its own; the rest is main's
    assert {p.path for p in guard.pins} == {
        wt_dir / "config.worktree",
        main / "commondir",
        main / "config.worktree",
        main / "info",
        main / "modules",
    }
    assert guard.refusals == ()


def test_links_and_missing_targets_refuse(tmp_path):
    target = repo(tmp_path / "real")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".git").symlink_to(target)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".git").write_text("gitdir: gone\n")
    gitdir = repo(tmp_path / "c", "hooks/")
    (gitdir / "config").symlink_to(tmp_path / "elsewhere")
    guard = gitguard.inspect([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    refused = dict(guard.refusals)
    assert set(refused) == {tmp_path / "a" / ".git", tmp_path / "b" / ".git", gitdir / "config"}
    assert "symbolic link" in refused[tmp_path / "a" / ".git"]
    assert str(tmp_path / "b" / "gone") in refused[tmp_path / "b" / ".git"]
    # a .git file git cannot read stays as it is: read-only, nothing to refuse
    (tmp_path / "b" / ".git").write_text("garbage\n")
    assert gitguard.inspect([tmp_path / "b"]).refusals == ()


def _policy(ws: Path, home: Path):
    return effective_policy(
        workspace=ws, home=home, user_policy_path=home / "none", trusted={}, flags=Flags()
    )


def test_both_backends_get_the_same_protection(tmp_path):
    ws = tmp_path / "ws"
    gitdir = repo(ws, "config", "hooks/")
    policy = _policy(ws, tmp_path)
    request = RunRequest(argv=("true",), cwd=ws, workspace=ws, environ={})
    spec = prepare(policy, request, BWRAP_BACKEND).spec
    assert {p.path for p in spec.pins} >= {gitdir / "commondir", gitdir / "info"}
    argv = bwrap.command(spec, "/usr/bin/bwrap", empty=lambda: 0)
    for name in ("commondir", "config", "hooks", "info", "modules", "worktrees"):
        path = str(gitdir / name)
        assert any(argv[i : i + 3] == ["--ro-bind", path, path] for i in range(len(argv))), name
    pin = ["--bind", str(gitdir), str(gitdir)]
    assert any(argv[i : i + 3] == pin for i in range(len(argv)))  # .git itself cannot be renamed
    prof = parse(seatbelt.profile(spec))
    for name in ("commondir", "config", "config.worktree", "hooks", "info", "modules"):
        assert decide(prof, "file-write*", str(gitdir / name)) == "deny", name
        assert decide(prof, "file-write*", f"{gitdir / name}/x") == "deny", name
    assert decide(prof, "file-write-unlink", str(gitdir)) == "deny"
    assert decide(prof, "file-write*", str(gitdir / "objects" / "x")) == "allow"


def test_refusals_are_decided_and_recorded_before_the_run(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".git").symlink_to(repo(tmp_path / "real"))
    request = RunRequest(argv=("true",), cwd=ws, workspace=ws, environ={})
    prepared = prepare(_policy(ws, tmp_path), request, BWRAP_BACKEND, euid=1000)
    assert prepared.refusal is not None and prepared.refusal.exit_code == 125
    assert "symbolic link" in str(prepared.refusal)
    [decision] = [d for d in prepared.decisions if d["area"] == "filesystem"]
    assert decision["verdict"] == "deny" and decision["subject"] == str(ws / ".git")


# ---------------------------------------------------------------- placeholders


def test_placeholders_exist_during_the_block_and_only_temporary_ones_go(tmp_path):
    data = tmp_path / "data"
    pins = [commondir_pin(tmp_path), Pin(tmp_path / "hooks", folder=True), Pin(tmp_path / "cfg")]
    with placeholders.held(pins, data) as absent:
        assert absent == set()
        assert (tmp_path / "commondir").read_bytes() == b".\n"
        assert (tmp_path / "hooks").is_dir()
        assert oct((data / placeholders.LOCKS).stat().st_mode & 0o777) == "0o700"
    assert not (tmp_path / "commondir").exists()
    assert (tmp_path / "hooks").is_dir() and (tmp_path / "cfg").read_bytes() == b""
    # the lock file stays, empty: it names no placeholder any more
    assert [f.stat().st_size for f in (data / placeholders.LOCKS).iterdir()] == [0]


def commondir_pin(folder: Path) -> Pin:
    return Pin(folder / "commondir", content=b".\n", keep=False)


def test_the_last_of_two_runs_removes_a_shared_placeholder(tmp_path):
    data = tmp_path / "data"
    pin = commondir_pin(tmp_path)
    with placeholders.held([pin], data):
        with placeholders.held([pin], data):
            pass
        assert pin.path.exists()  # the first run still holds it
    assert not pin.path.exists()


def test_something_that_replaced_a_placeholder_is_never_removed(tmp_path):
    data = tmp_path / "data"
    common = commondir_pin(tmp_path)
    with placeholders.held([common], data):
        common.path.write_text("../..\n")  # the user's own git wrote it meanwhile
    assert common.path.read_text() == "../..\n"


def test_an_existing_file_is_kept_and_an_unwritable_folder_reported(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "config").write_text("[core]\n")
    missing_parent = commondir_pin(tmp_path / "no" / "such")
    with placeholders.held([Pin(tmp_path / "config"), missing_parent], data) as absent:
        assert absent == {missing_parent.path}
    assert (tmp_path / "config").read_text() == "[core]\n"


def test_a_killed_holder_leaves_a_placeholder_the_next_sweep_removes(tmp_path):
    data = tmp_path / "data"
    pin = tmp_path / "commondir"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from krate.sandbox import placeholders\n"
        f"with placeholders.held([placeholders.Pin(Path({str(pin)!r}), content=b'.', keep=False)],"
        f" Path({str(data)!r})):\n"
        "    os._exit(0)\n"  # like SIGKILL: no clean-up
    )
    subprocess.run([os.sys.executable, "-c", code], check=True)
    assert pin.read_bytes() == b"."
    other = commondir_pin(tmp_path / "elsewhere")
    other.path.parent.mkdir()
    with placeholders.held([other], data):
        placeholders.sweep(data)  # a run in progress elsewhere is not disturbed
        assert not pin.exists() and other.path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the placeholder over")
def test_root_gives_a_placeholder_to_the_folder_owner(tmp_path, ordinary_user):
    import pwd

    entry = pwd.getpwnam(ordinary_user)
    os.chown(tmp_path, entry.pw_uid, entry.pw_gid)
    with placeholders.held([Pin(tmp_path / "hooks", folder=True)], tmp_path / "data"):
        assert (tmp_path / "hooks").stat().st_uid == entry.pw_uid
