"""Hints for paths a workload was given but cannot see: one line each, naming the flag.

`git clone /tmp/repo` in a sandbox fails with "does not exist", because the sandbox
has its own /tmp: the path exists on this machine, the workload was handed it, and
the sandbox does not share it. Before the launch, every argument that names an
existing host path (as itself, after `--opt=`, or as a file:// URL) is checked the
way the 126/127 check sees the command (`Backend.visible`); the CLI prints the
hints only when the workload then fails, so a command that merely mentions a
path (`echo /tmp/x`) gets none. Paths the policy hides on purpose (deny_read) get
the rule, never a flag that would expose them.

Pure (no printing, no environment); on `krate run`'s path, so standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

MAX_HINTS = 3
# Arguments looked at, at most: `xargs` can hand a run thousands of paths, and each
# costs a realpath and a visibility check before the workload starts.
MAX_CHECKED = 256
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_~")


def _candidates(arg: str) -> Iterable[str]:
    """The path-like parts of one argument: itself, an option's value, a file:// URL's path."""
    if arg.startswith("-"):
        name, eq, value = arg.partition("=")
        if not eq:
            return ()
        arg = value
    if arg.startswith("file://"):
        arg = arg[len("file://") :].split("?", 1)[0].split("#", 1)[0]
        if not arg.startswith("/"):
            return ()  # file://host/path: not a local path
    return (arg,) if "/" in arg and "\0" not in arg else ()


def quote(path: str) -> str:
    """`path` as a shell word (shlex.quote, without importing shlex on the run path); one
    with control characters (a newline) is written escaped, so the hint stays one line."""
    if path and all(c in _SAFE for c in path):
        return path
    if not path.isprintable():
        return "$'" + _escaped(path).replace("'", "\\'") + "'"
    return "'" + path.replace("'", "'\"'\"'") + "'"


def _escaped(text: str) -> str:
    """`text` on one line: control characters and undecodable bytes as escapes."""
    return text if text.isprintable() else repr(text)[1:-1]


def missing(
    args: Sequence[str],
    cwd: Path,
    visible: Callable[[Path], bool],
    decide_read: Callable[[str], Any],
) -> tuple[str, ...]:
    """One hint for each argument naming an existing host path the sandbox does not show."""
    hints: list[str] = []
    seen: set[str] = set()
    for arg in args[:MAX_CHECKED]:
        for text in _candidates(arg):
            path = os.path.normpath(os.path.join(cwd, text))
            if path in seen:
                continue
            seen.add(path)
            try:
                if not os.path.lexists(path):
                    continue
                real = os.path.realpath(path)
                if visible(Path(real)):
                    continue
            except (OSError, ValueError):
                continue
            decision = decide_read(real)
            if not decision.allowed:
                hints.append(
                    f"{_escaped(text)} is hidden from the workload by the policy ({decision.rule}, "
                    f"[{decision.layer}]); `krate policy explain read {quote(path)}` says more"
                )
            else:
                own = " (it has its own /tmp)" if real.startswith("/tmp/") else ""
                hints.append(
                    f"{_escaped(text)} exists here but the sandbox does not share it{own}; "
                    f"share it with --allow-write {quote(real)}"
                )
            if len(hints) >= MAX_HINTS:
                return tuple(hints)
    return tuple(hints)
