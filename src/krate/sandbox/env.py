"""The workload's environment: stripped by policy, and by value when a value is a credential.

Policies strip by *name* (`*_TOKEN`, `AWS_*`); a secret under an innocent name
(`CONFIG=ghp_...`) still leaks that way, so values are checked too against the
credential shapes in `krate.redact`, and a value that names a Unix socket (an
agent's, a daemon's) is stripped like a credential. A name the user passed
explicitly (`--env NAME`, `[env] pass`) is kept even then: the user asked for it.

Returns the names stripped and why, never the values: callers record names only.
Pure: the caller hands in the environment; this module never reads os.environ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from krate.records import NamedTuple
from krate.redact import credential_kind

# Temporary-folder variables: all point at the sandbox's private folder.
TMP_VARS = ("TMPDIR", "TMP", "TEMP", "TEMPDIR")


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
) -> tuple[dict[str, str], list[Stripped]]:
    """The environment for the workload and the list of names stripped.

    `decide(name)` is the policy's env decision (`.verdict`, `.rule`, `.layer`);
    `passed(name)` says whether the user explicitly passed that name; `sockets(value)`
    lists the Unix sockets a value names (sandbox/sockets.py), which strips it too.
    """
    kept: dict[str, str] = {}
    stripped: list[Stripped] = []
    for name in sorted(environ):
        value = environ[name]
        if name in TMP_VARS:
            continue
        decision = decide(name)
        if decision.verdict != "allow":
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
