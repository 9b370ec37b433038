"""A path the workload was handed but cannot see gets one hint naming the flag, and the flag works.

Real runs (root and the ordinary user): a git repository under the host's /tmp (the
sandbox has its own), a file:// URL and an `--opt=PATH` value; no hint for shared paths
or for a command that succeeds; a secret the policy hides gets its rule, never a flag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import chown_tree
from .run_support import SECRET


@pytest.fixture
def host_tmp_repo(box):
    """A git repository under the host's /tmp, readable by the box's user."""
    base = Path(tempfile.mkdtemp(prefix="krate-hint-", dir="/tmp"))
    base.chmod(0o755)
    repo = base / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "file.txt").write_text("from the host\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    if box.user:
        chown_tree(base, box.user)
    yield repo
    shutil.rmtree(base, ignore_errors=True)


def hints(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("krate: hint: ")]


def test_git_clone_from_the_hosts_tmp_gets_a_hint_and_the_hint_works(box, host_tmp_repo):
    env = box.env(GIT_CONFIG_GLOBAL="/dev/null")
    failed = box.krate("run", "--", "git", "clone", "-q", str(host_tmp_repo), "copy", env=env)
    assert failed.returncode != 0 and not (box.ws / "copy").exists()
    [hint] = hints(failed.stderr)
    flag = f"--allow-write {host_tmp_repo}"
    assert hint == (
        f"krate: hint: {host_tmp_repo} exists here but the sandbox does not share it "
        f"(it has its own /tmp); share it with {flag}"
    )
    # Apply the hint exactly as printed: the same clone now works, and says nothing more.
    done = box.krate(
        "run", *flag.split(), "--", "git", "clone", "-q", str(host_tmp_repo), "copy", env=env
    )
    assert done.returncode == 0, done.stderr
    assert (box.ws / "copy" / "file.txt").read_text() == "from the host\n"
    assert hints(done.stderr) == []


def test_urls_and_option_values_are_paths_too(box, host_tmp_repo):
    env = box.env(GIT_CONFIG_GLOBAL="/dev/null")
    url = box.krate("run", "--", "git", "clone", "-q", f"file://{host_tmp_repo}", "c", env=env)
    assert url.returncode != 0
    assert [h.split(" exists here")[0] for h in hints(url.stderr)] == [
        f"krate: hint: {host_tmp_repo}"
    ]
    target = host_tmp_repo / "file.txt"
    value = box.sh('cat "${1#--file=}"', "--", "sh", f"--file={target}")
    assert value.returncode != 0
    assert f"share it with --allow-write {target}" in value.stderr


def test_no_hint_for_shared_paths_or_a_command_that_succeeds(box, host_tmp_repo):
    shared = box.krate("run", "--", "cat", "/etc/hostname", str(box.ws / "README"), "/nonexistent")
    assert shared.returncode != 0 and hints(shared.stderr) == []
    relative = box.krate("run", "--", "cat", "./README", "../project/missing")
    assert relative.returncode != 0 and hints(relative.stderr) == []
    mention = box.krate("run", "--", "echo", str(host_tmp_repo))
    assert mention.returncode == 0 and mention.stdout == f"{host_tmp_repo}\n"
    assert mention.stderr == ""


def test_a_path_the_policy_hides_gets_its_rule_never_a_flag(box):
    out = box.krate("run", "--", "cat", str(box.key))
    assert out.returncode != 0 and SECRET not in out.stdout + out.stderr
    [hint] = hints(out.stderr)
    assert hint.startswith(f"krate: hint: {box.key} is hidden from the workload by the policy (")
    assert "--allow-write" not in hint and "krate policy explain read" in hint


def test_a_symlink_in_the_workspace_to_the_hosts_tmp_is_named_as_written(box, host_tmp_repo):
    link = box.ws / "lib"
    os.symlink(host_tmp_repo, link)
    out = box.krate("run", "--", "cat", "lib/file.txt")
    assert out.returncode != 0
    [hint] = hints(out.stderr)
    assert hint.startswith("krate: hint: lib/file.txt exists here but the sandbox does not")
    assert hint.endswith(f"--allow-write {host_tmp_repo}/file.txt")  # what must be shared


def test_a_command_without_execute_permission_hints_chmod_and_the_hint_works(box):
    script = box.ws / "build.sh"
    script.write_text("#!/bin/sh\necho built\n")
    script.chmod(0o644)
    if box.user:
        shutil.chown(script, box.user)
    out = box.krate("run", "--", "./build.sh")
    assert out.returncode == 126 and out.stdout == ""
    assert out.stderr == (
        f"krate: cannot execute {script}: not an executable file; "
        f"make it one with `chmod +x {script}`\n"
    )
    fix = out.stderr.split("`")[1].split()
    subprocess.run(fix, check=True, user=box.user)
    done = box.krate("run", "--", "./build.sh")
    assert done.returncode == 0 and done.stdout == "built\n"
    folder = box.krate("run", "--", str(box.ws / ".git"))  # a folder: chmod would not help
    assert folder.returncode == 126 and "chmod" not in folder.stderr


def test_a_command_under_the_hosts_tmp_names_the_flag_and_the_flag_works(box, host_tmp_repo):
    tool = host_tmp_repo / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    out = box.krate("run", "--", str(tool))
    assert out.returncode == 127 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"krate: command not found: {tool}; ")
    assert out.stderr.endswith(f"share it with --allow-write {tool}\n")
    done = box.krate("run", "--allow-write", str(tool), "--", str(tool))
    assert done.returncode == 0 and done.stdout == "tool ran\n"


def test_a_path_with_a_newline_still_gets_a_one_line_hint(box, host_tmp_repo):
    odd = host_tmp_repo / "two\nlines"
    odd.write_text("x\n")
    out = box.krate("run", "--", "cat", str(odd))
    assert out.returncode != 0
    [hint] = hints(out.stderr)
    assert hint.endswith(f"share it with --allow-write $'{host_tmp_repo}/two\\nlines'")
    assert "\\n" in hint and out.stderr.count("krate: hint:") == 1
