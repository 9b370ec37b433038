"""The workspace's git commit and whether it has uncommitted changes, via `git`.

Why a subprocess and not a library: git is what the user has, and reading its
index correctly (worktrees, packed refs, sha256 repositories) is git's job. A
repository's own config is writable by the workloads krate runs, and `git status`
can execute programs named there (core.fsmonitor, filter drivers): both are
switched off for these calls. Never records remote URLs (they may hold tokens).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from krate.records import NamedTuple

TIMEOUT_S = 30
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class GitState(NamedTuple):
    toplevel: str
    commit: str
    dirty: bool

    def to_dict(self) -> dict:
        return self._asdict()


def _env(environ: Mapping[str, str]) -> dict[str, str]:
    """git's environment: the caller's minus variables that would redirect git elsewhere.

    This is passed to the child process only; krate itself stores none of it.
    """
    env = {k: v for k, v in environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    return env


def _git(git: str, cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [git, "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _filter_overrides(git: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """`-c filter.X.clean= ...` for every filter driver the repository's own config defines."""
    listed = _git(
        git,
        cwd,
        "config",
        "--local",
        "--includes",
        "--name-only",
        "--get-regexp",
        r"^filter\.",
        env=env,
    )
    overrides: list[str] = []
    for key in listed.stdout.decode(errors="replace").split():
        if key.endswith((".clean", ".process", ".smudge")):
            overrides += ["-c", f"{key}="]
    return overrides


def workspace_state(cwd: Path, environ: Mapping[str, str]) -> GitState | None:
    """The commit checked out in `cwd`'s repository and its dirty state; None if not a repo.

    `environ` is the environment git runs with (PATH, HOME for the user's git config).
    """
    git = shutil.which("git", path=environ.get("PATH"))
    if git is None:
        return None
    env = _env(environ)
    try:
        top = _git(git, cwd, "rev-parse", "--show-toplevel", env=env)
        if top.returncode != 0:
            return None
        head = _git(git, cwd, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", env=env)
        commit = head.stdout.decode().strip()
        if head.returncode != 0 or not _COMMIT.match(commit):
            return None  # a repository without commits yet: nothing to pin
        status = _git(
            git,
            cwd,
            *_filter_overrides(git, cwd, env),
            "status",
            "--porcelain=v1",
            "-z",
            "--ignore-submodules=none",
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if status.returncode != 0:
        return None
    return GitState(top.stdout.decode().strip(), commit, bool(status.stdout.strip(b"\0")))
