"""The workload's environment: stripped by policy, and by value when a value is a credential.

Policies strip by *name* (`*_TOKEN`, `AWS_*`); a secret under an innocent name
(`CONFIG=ghp_...`) still leaks that way, so values are checked too against the
credential shapes in `krate.redact`, and a value that names a Unix socket (an
agent's, a daemon's) is stripped like a credential. A name the user passed
explicitly (`--env NAME`, `[env] pass`) is kept even then: the user asked for it.

A path is not a secret: a `*_CONFIG` / `*_CONFIG_FILE` variable that only a built-in
family pattern strips (`AWS_CONFIG_FILE` under `AWS_*`) is kept when its value is the
path of an existing file and its name holds no secret word. Whether the workload may
read that file is the filesystem policy's to say (`~/.aws` is hidden either way); the
CA-bundle variables are kept by the built-in `pass` list (policy/builtin.py KEEP_ENV).

Returns the names stripped and why, never the values: callers record names only.
Pure: the caller hands in the environment; this module never reads os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from krate.records import NamedTuple
from krate.redact import credential_kind

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

# Temporary-folder variables: all point at the sandbox's private folder.
TMP_VARS = ("TMPDIR", "TMP", "TEMP", "TEMPDIR")
# Names that point at a configuration file, and words that make a name secret whatever it holds.
PATH_SUFFIXES = ("_CONFIG", "_CONFIG_FILE")
SECRET_WORDS = ("TOKEN", "SECRET", "PASS", "CREDENTIAL", "AUTH", "KEY", "COOKIE")


def path_pointer(name: str, value: str, is_file: Callable[[str], bool]) -> bool:
    """Whether `name=value` only points at a configuration file (not a secret itself)."""
    upper = name.upper()
    return (
        upper.endswith(PATH_SUFFIXES)
        and not any(word in upper for word in SECRET_WORDS)
        and value.startswith("/")
        and "\n" not in value
        and is_file(value)
    )


class Stripped(NamedTuple):
    """One variable removed: its name and the rule that removed it (no value, ever)."""

    name: str
    rule: str
    layer: str

    def to_decision(self) -> dict[str, Any]:
        return {
            "area": "env",
            "verdict": "deny",
            "subject": self.name,
            "rule": self.rule,
            "layer": self.layer,
        }


def scrub(
    environ: Mapping[str, str],
    decide: Callable[[str], Any],
    passed: Callable[[str], bool],
    *,
    tmpdir: str,
    sockets: Callable[[str], list[str]] | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
) -> tuple[dict[str, str], list[Stripped]]:
    """The environment for the workload and the list of names stripped.

    `decide(name)` is the policy's env decision (`.verdict`, `.rule`, `.layer`);
    `passed(name)` says whether the user explicitly passed that name; `sockets(value)`
    lists the Unix sockets a value names (sandbox/sockets.py), which strips it too;
    `is_file(value)` says whether a value is an existing file's path (`path_pointer`).
    """
    kept: dict[str, str] = {}
    stripped: list[Stripped] = []
    for name in sorted(environ):
        value = environ[name]
        if name in TMP_VARS:
            continue
        decision = decide(name)
        builtin = str(decision.layer).startswith("builtin")
        if decision.verdict != "allow" and not (builtin and path_pointer(name, value, is_file)):
            stripped.append(Stripped(name, decision.rule, decision.layer))
            continue
        if not passed(name):
            kind = credential_kind(value)
            if kind:
                stripped.append(Stripped(name, f"value looks like a {kind}", "builtin"))
                continue
            if sockets is not None and sockets(value):
                stripped.append(Stripped(name, "value names a Unix socket", "builtin"))
                continue
        kept[name] = value
    kept["TMPDIR"] = tmpdir
    for name in TMP_VARS[1:]:
        if name in environ:
            kept[name] = tmpdir
    return kept, stripped
