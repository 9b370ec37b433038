"""git's own files in writable folders: what must stay read-only so git outside cannot be hijacked.

git, run later by the user outside the sandbox, executes programs named in its
configuration (`core.fsmonitor`, `core.hooksPath`, hooks, filter drivers). A
workload that may write a repository's git folder could redirect git to a
configuration of its own: `commondir` (to a folder holding another `config`),
`config.worktree`, `hooks/`, `info/`, `modules/` and `worktrees/` (each holding more
git folders), or a `.git` file naming another git folder. Commits and fetches
need the rest (objects, refs, logs, index, HEAD and their lock files), and git
replaces those by renaming a lock file in the git folder itself, so that folder
stays writable and each dangerous name in it is mounted over instead: an
existing one read-only; a missing one first gets a placeholder (placeholders.py),
because a name that does not exist cannot be mounted over on Linux.

This applies to the git folder of every writable folder (the workspace and each
allow_write path), and to git folders that a `.git` file there points to when they
are writable too (a linked worktree's folder in the main repository's `worktrees/`,
a submodule's in `modules/`: that one folder is writable again, so commits work,
with its own dangerous names read-only). Reads a few names and two small files;
never runs git.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from krate.policy.builtin import GIT_READ_ONLY
from krate.records import NamedTuple
from krate.sandbox.placeholders import Pin
from krate.sandbox.spec import is_within

# What stands in for a name that is missing from a repository's own git folder: empty
# folders and empty config files, which git treats as missing ones (they stay), and, for the
# run only, a `commondir` naming the git folder itself (git then behaves as without one).
# `gitdir` exists only in a linked worktree's git folder, where git made it.
PLACEHOLDERS = {
    "commondir": Pin(Path("commondir"), content=b".\n", keep=False),
    "config": Pin(Path("config")),
    "config.worktree": Pin(Path("config.worktree")),
    "hooks": Pin(Path("hooks"), folder=True),
    "info": Pin(Path("info"), folder=True),
    "modules": Pin(Path("modules"), folder=True),
    "worktrees": Pin(Path("worktrees"), folder=True),
}
# In a linked worktree's git folder only these are its own; the rest come from `commondir`.
PER_WORKTREE = ("config.worktree",)
MAX_GITFILE = 4096


class Guard(NamedTuple):
    read_only: tuple[Path, ...]  # existing paths to mount read-only
    pins: tuple[Pin, ...]  # missing names to hold with a placeholder
    refusals: tuple[tuple[Path, str], ...]  # (path, why the run cannot be protected)
    # The git folder of a writable worktree or submodule inside another repository's
    # read-only `worktrees/` or `modules/`: writable again (its own dangerous names are not).
    writable: tuple[Path, ...] = ()


def inspect(
    writable: Sequence[Path], read_only: Iterable[Path] = (), hidden: Iterable[Path] = ()
) -> Guard:
    """The protection for the git folders of the `writable` roots (resolved, existing)."""
    found = _Found(_Layout(writable, read_only, hidden))
    gitdirs = [gitdir for root in writable for gitdir in found.dot_git(root / ".git")]
    seen: set[Path] = set()
    while gitdirs:
        gitdir = gitdirs.pop(0)
        if gitdir in seen:
            continue
        seen.add(gitdir)
        common = _commondir(gitdir)
        if common is not None:
            gitdirs.append(common)
        if found.layout.writable(gitdir):  # else read-only or hidden in the sandbox already
            found.git_folder(gitdir, common)
    return found.guard()


class _Found:
    """What `inspect` collects, step by step, into a Guard."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.protected: list[Path] = []
        self.pins: list[Pin] = []
        self.refusals: list[tuple[Path, str]] = []
        self.reopened: list[Path] = []

    def dot_git(self, dot_git: Path) -> list[Path]:
        """Protect a writable root's `.git`; returns the git folder it is or names, if any."""
        try:
            st = os.lstat(dot_git)
        except OSError:
            return []
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(dot_git)
            self.refusals.append(
                (
                    dot_git,
                    f"{dot_git} is a symbolic link (to {target}), which a workload could replace "
                    "by a git folder of its own; replace the link by a file holding "
                    f"`gitdir: {target}`",
                )
            )
            return []
        if stat.S_ISDIR(st.st_mode):
            return [dot_git]
        if not stat.S_ISREG(st.st_mode):
            return []
        self.protected.append(dot_git)
        target = _gitfile_target(dot_git)
        if target is not None and target.is_dir():
            if self.layout.writable(target, git_rules=False):
                self.reopened.append(target)  # writable, even inside worktrees/ or modules/
                self.layout.add(target, True)
            return [target]
        if target is not None and self.layout.writable(target):
            self.refusals.append(
                (
                    dot_git,
                    f"{dot_git} points to {target}, which is not a git folder, and the "
                    "workload could create one there; fix or remove the .git file",
                )
            )
        # A .git file git cannot read stays as it is (read-only): git outside refuses it.
        return []

    def git_folder(self, gitdir: Path, common: Path | None) -> None:
        """Each dangerous name in a writable git folder: read-only, or held by a placeholder."""
        for name in GIT_READ_ONLY:
            path = gitdir / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pin = PLACEHOLDERS.get(name)
                if pin is not None and (common is None or name in PER_WORKTREE):
                    self.pins.append(pin._replace(path=path))
                    self.layout.add(path, False)
                continue
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                self.refusals.append(
                    (
                        path,
                        f"{path} is a symbolic link (to {os.path.realpath(path)}), which a "
                        "workload could replace; git would then run what it names. Replace the "
                        "link by the file or folder itself",
                    )
                )
                continue
            self.protected.append(path)
            self.layout.add(path, False)

    def guard(self) -> Guard:
        # Only those inside a read-only worktrees/ or modules/ need a mount of their own.
        reopened = [g for g in self.reopened if self.layout.inside_git_folders(g)]
        return Guard(
            tuple(dict.fromkeys(self.protected)),
            tuple(self.pins),
            tuple(self.refusals),
            tuple(reopened),
        )


class _Layout:
    """Which paths the workload may write: the deepest rule containing a path decides."""

    def __init__(
        self, writable: Iterable[Path], read_only: Iterable[Path], hidden: Iterable[Path]
    ) -> None:
        self.rules = [(p, True) for p in writable]
        self.rules += [(p, False) for p in (*read_only, *hidden)]

    def add(self, path: Path, can_write: bool) -> None:
        self.rules.append((path, can_write))

    def writable(self, path: Path, *, git_rules: bool = True) -> bool:
        """Whether the workload may write `path`; `git_rules=False` ignores git's own
        read-only `worktrees/` and `modules/` folders (to find git folders inside them)."""
        best: tuple[int, bool] = (-1, False)
        for rule, can_write in self.rules:
            if not git_rules and not can_write and _git_folder_of_folders(rule):
                continue
            depth = len(rule.parts)
            if is_within(path, rule) and (depth > best[0] or (depth == best[0] and not can_write)):
                best = (depth, can_write)
        return best[1]

    def inside_git_folders(self, path: Path) -> bool:
        return any(
            not w and _git_folder_of_folders(r) and is_within(path, r) for r, w in self.rules
        )


def _git_folder_of_folders(path: Path) -> bool:
    return path.name in ("worktrees", "modules") and ".git" in path.parts


def _gitfile_target(dot_git: Path) -> Path | None:
    """The folder a `.git` file names (`gitdir: PATH`, relative to the file's folder), resolved."""
    try:
        with open(dot_git, "rb") as f:
            text = f.read(MAX_GITFILE).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    first = text.splitlines()[0] if text else ""
    if not first.startswith("gitdir: "):
        return None
    target = first[len("gitdir: ") :].strip()
    if not target:
        return None
    return Path(os.path.realpath(dot_git.parent / target))


def _commondir(gitdir: Path) -> Path | None:
    """The common git folder a linked worktree's (or submodule's) git folder names, if any."""
    try:
        with open(gitdir / "commondir", "rb") as f:
            text = f.read(MAX_GITFILE).decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return None
    if not text:
        return None
    common = Path(os.path.realpath(gitdir / text))
    if common == gitdir or not common.is_dir():
        return None  # a placeholder (`.`) or nothing git could use
    return common
