"""The plain data a policy is made of: flags, limits, decisions, and one parsed layer.

These are values only, so the sandbox and the egress proxy can pass them around
and record them; this module must never read files or the environment. They are
NamedTuples rather than dataclasses because they are built on every `krate run`:
the dataclasses module and its generated methods would cost a fifth of krate's
start-up (see ARCHITECTURE.md, "Start-up budget").
"""

from __future__ import annotations

from collections.abc import Mapping

from krate.errors import KrateError
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from pathlib import Path  # not at run time: the egress proxy loads this module

LIMIT_NAMES = ("cpu_seconds", "memory_mb", "processes", "wall_seconds")


class PolicyError(KrateError):
    """A policy file or flag is invalid; the message starts with `FILE:LINE:` when it can."""


class Flags(NamedTuple):
    """The command-line layer (`--policy`, `--allow-host`, ...), the highest and always trusted."""

    policy: str | None = None  # builtin name or a file path (--policy)
    allow_host: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    deny_read: tuple[str, ...] = ()
    no_network: bool = False
    env: tuple[str, ...] = ()  # --env NAME: pass this variable through even if it matches strip
    # --allow-private-host HOST: this allowed name may resolve to a private or loopback address
    allow_private_host: tuple[str, ...] = ()


class Limits(NamedTuple):
    """Resource limits; None means no limit from the policy."""

    cpu_seconds: int | None = None
    memory_mb: int | None = None
    processes: int | None = None
    wall_seconds: int | None = None

    def to_dict(self) -> dict:
        return self._asdict()

    @property
    def any_rlimit(self) -> bool:
        """Whether a limit other than wall-clock time applies (those are rlimits)."""
        return any(v is not None for v in (self.cpu_seconds, self.memory_mb, self.processes))


class Decision(NamedTuple):
    """One answer, naming the rule and the layer that gave it, so a user can see why."""

    verdict: str  # "allow" | "deny"
    rule: str  # e.g. "network.allow: *.npmjs.org" or "default: no rule allows it"
    layer: str  # "builtin:default" | "user" | "project" | "policy-file" | "flags"
    subject: str  # e.g. "registry.npmjs.org:443"

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def to_dict(self) -> dict:
        return self._asdict()


class Item(NamedTuple):
    """One value as written in a layer, with where it was written (for reports)."""

    text: str
    line: int | None = None


class Layer(NamedTuple):
    """One parsed, validated layer before it is combined with the others.

    `net_allow` None means "not set here" (keep the list from below); an empty
    tuple means "no network at all". `base_dir` anchors relative paths.
    """

    name: str
    trusted: bool
    base_dir: Path
    source: Path | None = None
    sha256: str | None = None
    profile: Item | None = None
    deny_read: tuple[Item, ...] = ()
    allow_write: tuple[Item, ...] = ()
    read_only: tuple[Item, ...] = ()
    net_allow: tuple[Item, ...] | None = None
    net_add: tuple[Item, ...] = ()
    private_ok: tuple[Item, ...] = ()  # allowed names that may resolve to private addresses
    env_strip: tuple[Item, ...] = ()
    env_pass: tuple[Item, ...] = ()
    limits: tuple[tuple[str, int, int | None], ...] = ()  # (name, value, line)
    # How rules are named in decisions: "network.allow" in a file, "--allow-host" for flags.
    keys: Mapping[str, str] | None = None

    def key(self, name: str) -> str:
        return self.keys.get(name, name) if self.keys else name

    def where(self, item: Item | None) -> str:
        """`FILE:LINE: ` for reports about this layer's items, or the layer name."""
        if self.source is None:
            return f"{self.name}: "
        if item is not None and item.line:
            return f"{self.source}:{item.line}: "
        return f"{self.source}: "
