"""git's own files stay read-only in the sandbox, so git run later outside cannot be hijacked.

Real bubblewrap, real git, as root and as the ordinary user: the workload attacks a
real repository, then the test runs `git status` outside as the repository's owner
would, and checks that nothing the workload planted ran. Commits and fetches inside
the sandbox must keep working.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import chown_tree, wait_for
from .run_support import Box

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/usr/bin/bwrap") and shutil.which("git")),
    reason="needs bubblewrap and git",
)

GIT_ID = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(box: Box, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """git as the repository's owner would run it, outside the sandbox."""
    kw: dict = {}
    if box.user:
        entry = pwd.getpwnam(box.user)
        kw.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    env = {**box.env(), **GIT_ID, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check, **kw
    )


def make_repo(box: Box, path: Path, *init: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if box.user:
        chown_tree(box.base, box.user)
    git(box, path, "init", "-q", "-b", "main", *init)
    (path / "f").write_text("one\n")
    if box.user:
        chown_tree(path, box.user)
    git(box, path, "add", "f")
    git(box, path, "commit", "-qm", "one")
    return path


def run_in(box: Box, cwd: Path, script: str, *flags: str) -> subprocess.CompletedProcess:
    return box.krate("run", *flags, "--", "/bin/sh", "-c", script, cwd=cwd, env=box.env(**GIT_ID))


def evil_config(marker: Path) -> str:
    return f"[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = touch {marker}; false\\n"


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every name at the top of `folder` with its bytes (None for folders)."""
    return {
        e.name: None if e.is_dir(follow_symlinks=False) else Path(e.path).read_bytes()
        for e in os.scandir(folder)
    }


PROTECTED = ("config", "config.worktree", "commondir", "hooks", "info", "modules", "worktrees")


def protected_state(gitdir: Path) -> dict:
    state = {}
    for name in PROTECTED:
        path = gitdir / name
        if path.is_dir():
            state[name] = sorted(os.listdir(path))
        elif path.exists():
            state[name] = path.read_bytes()
    return state


def assert_nothing_planted(gitdir: Path, before: dict) -> None:
    """The protected names are as before, except placeholders that stay: empty folders and
    empty config files, which git treats as missing ones. No `commondir` is left."""
    after = protected_state(gitdir)
    for name in set(after) - set(before):
        assert name != "commondir", "the commondir placeholder was left behind"
        assert after.pop(name) in ([], b""), name
    assert after == before


# ---------------------------------------------------------------- the attack


def test_commondir_attack_does_not_run_anything_at_the_next_git_status(box):
    repo = make_repo(box, box.ws / "repo")
    marker = box.base / "PWNED"
    before = protected_state(repo / ".git")
    script = (
        "mkdir .evil && cp -r .git/objects .git/refs .git/HEAD .evil/ && "
        f"printf '{evil_config(marker)}' > .evil/config; "
        "echo ../.evil > .git/commondir || echo 'commondir refused'; echo done"
    )
    out = run_in(box, repo, script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("commondir refused\ndone\n"), out.stdout
    git(box, repo, "status", "--short", check=False)
    assert not marker.exists(), "git outside ran the workload's core.fsmonitor"
    assert_nothing_planted(repo / ".git", before)
    layout = box.last_run()["layout"]
    assert str(repo / ".git" / "commondir") in layout["read_only"]
    assert str(repo / ".git" / "config") in layout["read_only"]


def test_dangerous_git_names_cannot_be_created_or_replaced(box):
    # --template= : no hooks/ and no info/, so the missing folders are attacked too
    repo = make_repo(box, box.ws / "repo", "--template=")
    marker = box.base / "PWNED"
    before = protected_state(repo / ".git")
    assert "hooks" not in before and "commondir" not in before
    attempts = [
        "echo ../.evil > .git/commondir",
        "ln -s ../.evil .git/commondir",
        f"printf '{evil_config(marker)}' > cfg && mv cfg .git/config",
        f"printf '{evil_config(marker)}' >> .git/config",
        "mv .git/config .git/config.old",
        "rm -f .git/config",
        f"printf '{evil_config(marker)}' > .git/config.worktree",
        "mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch x\\n' > .git/hooks/post-checkout",
        "mkdir -p .git/info && echo '* filter=x' > .git/info/attributes",
        "mkdir -p .git/worktrees/x && echo /tmp/x > .git/worktrees/x/gitdir",
        "mkdir -p .git/modules/x && echo '[core]' > .git/modules/x/config",
        "rmdir .git/hooks",
        "mv .git/info .git/info.old",
        "mv .git .git.old",
        "echo 'gitdir: .evil' > .git",
    ]
    script = "; ".join(f"if {a} 2>/dev/null; then echo 'WROTE: {a}'; fi" for a in attempts)
    out = run_in(box, repo, script + "; echo done")
    assert "WROTE" not in out.stdout, out.stdout
    assert out.stdout.endswith("done\n")
    assert_nothing_planted(repo / ".git", before)
    git(box, repo, "status", "--short", check=False)
    assert not marker.exists()


def test_git_commit_and_fetch_work_inside(box):
    origin = box.base / "origin.git"
    upstream = make_repo(box, box.base / "upstream")
    git(box, box.base, "clone", "-q", "--bare", str(upstream), str(origin))
    repo = box.ws / "repo"
    git(box, box.ws, "clone", "-q", str(origin), str(repo))
    (upstream / "f").write_text("two\n")
    git(box, upstream, "commit", "-qam", "two")
    git(box, upstream, "push", "-q", str(origin), "main")
    script = (
        "set -e; git fetch -q origin; git merge -q --ff-only origin/main; "
        "echo three > g; git add g; git commit -qm three; "
        "git branch topic; git tag v1; git pack-refs --all; git branch -D topic >/dev/null; "
        "echo four >> g; git stash -q; git stash pop -q; git commit -qam four; "
        "git log --format=%s; git status --short"
    )
    out = run_in(box, repo, script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["four", "three", "two", "one"]
    # outside: the history is there, the repository is sound, nothing was left behind
    assert git(box, repo, "log", "--format=%s").stdout.split() == ["four", "three", "two", "one"]
    assert git(box, repo, "fsck", "--no-progress").returncode == 0
    assert git(box, repo, "status", "--porcelain").stdout == ""
    assert not (repo / ".git" / "commondir").exists()
    assert git(box, repo, "rev-parse", "--git-common-dir").stdout.strip() == ".git"


# ---------------------------------------------------------------- .git files (worktrees)


def test_a_worktree_git_file_and_its_git_folder_are_protected(box):
    main = make_repo(box, box.ws / "main")
    worktree = box.ws / "wt"
    git(box, main, "worktree", "add", "-q", str(worktree))
    gitdir = main / ".git" / "worktrees" / "wt"
    marker = box.base / "PWNED"
    before_file, before_main = (worktree / ".git").read_bytes(), protected_state(main / ".git")
    before_wt = protected_state(gitdir)
    attempts = [
        "echo 'gitdir: ../.evil' > .git",
        f"echo ../.evil > {gitdir}/commondir",
        f"echo /x > {gitdir}/gitdir",
        f"printf '{evil_config(marker)}' > {gitdir}/config.worktree",
        f"printf '{evil_config(marker)}' >> {main}/.git/config",
        f"echo x > {main}/.git/hooks/post-checkout",
    ]
    script = "; ".join(f"if {a} 2>/dev/null; then echo 'WROTE: {a}'; fi" for a in attempts)
    # the main repository is writable too (it is inside the workspace here): a commit works
    script += "; echo two > f && git commit -qam two && echo committed"
    out = run_in(box, worktree, script, "--allow-write", str(main))
    assert "WROTE" not in out.stdout, out.stdout
    assert out.stdout.endswith("committed\n"), out.stderr
    assert (worktree / ".git").read_bytes() == before_file
    assert_nothing_planted(main / ".git", before_main)
    assert_nothing_planted(gitdir, before_wt)
    git(box, worktree, "status", "--short", check=False)
    assert not marker.exists()
    layout = box.last_run()["layout"]
    assert str(worktree / ".git") in layout["read_only"]
    assert str(gitdir / "commondir") in layout["read_only"]


def test_a_git_file_pointing_outside_the_writable_folders_stays_read_only(box):
    main = make_repo(box, box.home / "main")  # outside the workspace: read-only inside
    worktree = box.ws / "wt"
    git(box, main, "worktree", "add", "-q", str(worktree))
    before = (worktree / ".git").read_bytes()
    out = run_in(box, worktree, "echo 'gitdir: ../x' > .git || echo refused")
    assert out.stdout == "refused\n"
    assert (worktree / ".git").read_bytes() == before
    assert str(worktree / ".git") in box.last_run()["layout"]["read_only"]


@pytest.mark.parametrize("kind", ["symlink", "missing-target"])
def test_a_git_entry_that_cannot_be_protected_refuses_the_run(box, kind):
    repo = make_repo(box, box.home / "elsewhere")
    if kind == "symlink":
        (box.ws / ".git").rename(box.ws / "old-git")
        (box.ws / ".git").symlink_to(repo / ".git")
        expected = "symbolic link"
    else:
        shutil.rmtree(box.ws / ".git")
        (box.ws / ".git").write_text("gitdir: gone\n")
        expected = str(box.ws / "gone")
    if box.user:
        os.lchown(box.ws / ".git", *_ids(box.user))
    out = box.sh("echo ran")
    assert out.returncode == 125 and "ran" not in out.stdout
    assert expected in out.stderr and out.stderr.startswith("krate: refusing to run")
    run = box.last_run()
    assert run["status"] == "refused" and run["exit_code"] == 125
    [decision] = [d for d in run["decisions"] if d["area"] == "filesystem"]
    assert decision["verdict"] == "deny" and decision["subject"] == str(box.ws / ".git")


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


# ---------------------------------------------------------------- placeholders


def test_concurrent_runs_share_the_placeholders_and_the_last_removes_them(box):
    repo = make_repo(box, box.ws / "repo")
    started, go = repo / "long-started", repo / "long-go"
    long = box.popen(
        "run", "--", "/bin/sh", "-c",
        f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; "
        "echo ../.evil > .git/commondir 2>/dev/null && echo WROTE || echo refused",
        cwd=repo, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(started.exists, what="the long run to start")
    short = run_in(box, repo, "cat .git/commondir")
    assert short.returncode == 0 and short.stdout == ".\n"
    assert (repo / ".git" / "commondir").exists()  # still held for the long run
    go.touch()
    out, _ = long.communicate(timeout=60)
    assert out == "refused\n"
    assert not (repo / ".git" / "commondir").exists()


def test_placeholders_left_by_a_killed_krate_are_removed_by_the_next_run(box):
    repo = make_repo(box, box.ws / "repo")
    started = repo / "started"
    proc = box.popen("run", "--", "/bin/sh", "-c", f"touch {started}; exec sleep 30", cwd=repo)
    wait_for(started.exists, what="the workload to start")  # placeholders are made before it
    assert (repo / ".git" / "commondir").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert (repo / ".git" / "commondir").read_bytes() == b".\n"  # harmless: git's own folder
    assert git(box, repo, "status", "--short").returncode == 0
    out = box.sh("true")  # another run, elsewhere, sweeps what nobody holds
    assert out.returncode == 0, out.stderr
    assert not (repo / ".git" / "commondir").exists()


def test_a_repository_the_user_cannot_write_still_runs(box):
    if not box.user:
        pytest.skip("root can write everywhere")
    repo = box.ws / "theirs"  # root's: no placeholder can be made (nor planted) there
    subprocess.run(["git", "init", "-q", "--template=", str(repo)], check=True)
    before = sorted(os.listdir(repo / ".git"))
    out = run_in(box, repo, "echo ../.evil > .git/commondir || mkdir .git/hooks || echo refused")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "refused\n"
    assert sorted(os.listdir(repo / ".git")) == before
