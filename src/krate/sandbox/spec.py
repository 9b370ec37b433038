"""What one sandboxed run looks like, independent of the backend that enforces it.

A `SandboxSpec` is plain data built from the effective policy: the command, the
folders that are writable, read-only or hidden (resolved, existing, ordered so
that the most specific rule wins), the scrubbed environment and the limits.
bubblewrap (Linux) and Seatbelt (macOS) both translate this one description, so
they cannot drift apart in what they allow.

Never decides policy itself (the policy module does) and never touches the
environment of the krate process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from krate.policy.model import Limits  # the policy's own limits, enforced as they are
from krate.policy.paths import Resolver, expand
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.sandbox.placeholders import Pin

# Host folders holding sockets of privileged daemons (Docker, D-Bus, the user's
# session bus with the keyring): a Unix socket on a read-only mount can still
# be connected to, so these are replaced by empty folders.
SOCKET_DIRS = ("/run", "/var/run")
PRIVATE_TMP = "/tmp"


NO_LIMITS = Limits()


class Bind(NamedTuple):
    """An extra mount for the egress bridge and later features: host `source` at `dest`,
    or (`data`) a read-only file (0444) holding those bytes (bubblewrap only)."""

    source: Path
    dest: Path
    writable: bool = False
    data: bytes | None = None


class SandboxSpec(NamedTuple):
    argv: tuple[str, ...]
    cwd: Path
    workspace: Path
    writable: tuple[Path, ...]
    read_only: tuple[Path, ...]
    hidden: tuple[Path, ...]
    env: Mapping[str, str]
    limits: Limits = NO_LIMITS
    # "none": the workload's own loopback only. The egress issue adds "proxy".
    network: str = "none"
    # Host-loopback TCP ports the workload may connect to besides the proxy's (whose port
    # Seatbelt reads from the proxy variables): on macOS, the ports the policy forwards.
    loopback_ports: tuple[int, ...] = ()
    extra_binds: tuple[Bind, ...] = ()
    # Descriptors the sandbox's first process inherits (the egress bridge's go-ahead);
    # the launcher closes krate's copies once the sandbox started.
    pass_fds: tuple[int, ...] = ()
    tmpdir: str = PRIVATE_TMP
    notes: tuple[str, ...] = ()
    # The policy's lists resolved but not filtered by existence (Seatbelt can name
    # paths that do not exist yet; bubblewrap can only mount existing ones).
    declared_writable: tuple[Path, ...] = ()
    declared_read_only: tuple[Path, ...] = ()
    declared_hidden: tuple[Path, ...] = ()
    # Whom the sandbox runs as when krate runs as root (sandbox/identity.py); None: krate's own.
    run_as: Any = None
    # Missing names in `read_only` that bubblewrap must mount over: placeholders hold them
    # for the run (sandbox/placeholders.py; git's own files, see sandbox/gitguard.py).
    pins: tuple[Pin, ...] = ()
    # `krate run IMAGE`: the image (images/runtime.py ImageRun) whose root replaces the
    # host's; the workspace is mounted at /work (sandbox/bwrap_image.py). None: the host's.
    image: Any = None
    # Read-only files krate writes the content of, at (path, bytes): bubblewrap's
    # `--ro-bind-data` (npm's and pip's settings without credentials, sandbox/pkgconfig.py).
    data_files: tuple[tuple[Path, bytes], ...] = ()

    def layout(self) -> dict[str, Any]:
        """What the run record keeps about the filesystem view (paths only)."""
        return {
            "writable": [str(p) for p in self.writable],
            "read_only": [str(p) for p in self.read_only],
            "hidden": [str(p) for p in self.hidden],
            "network": self.network,
        }


def resolve(paths: Iterable[Path | str], resolver: Resolver | None = None) -> list[Path]:
    """Each path with symlinks resolved; order kept, no repeats."""
    real = resolver or Resolver()
    out: dict[str, None] = {}
    for raw in paths:
        out.setdefault(real(os.path.expanduser(str(raw))))
    return [Path(p) for p in out]


def resolve_existing(paths: Iterable[Path | str]) -> list[Path]:
    """Each path with symlinks resolved, kept only when it exists; order kept, no repeats."""
    return [p for p in resolve(paths) if p.exists()]


def is_within(path: Path, root: Path) -> bool:
    """`path == root or root in path.parents`, by the paths' parts: the same answer
    without making a Path per parent (~200 calls per run, ~1 ms)."""
    parts = root.parts
    if not parts:  # Path("."): every relative path is within it, no absolute one
        return not path.anchor
    return path.parts[: len(parts)] == parts


def protect_ancestors(read_only: Iterable[Path], writable: Iterable[Path]) -> list[Path]:
    """Folders between a writable root and each read-only path inside it.

    Renaming `.git` away and creating a fresh `.git/hooks` would dodge a
    read-only mount on `.git/hooks`; a folder that is itself a mount point
    cannot be renamed or removed (EBUSY), so these get bound onto themselves.
    """
    roots = list(writable)
    extra: list[Path] = []
    for path in read_only:
        owners = [root for root in roots if is_within(path, root) and path != root]
        if not owners:
            continue
        root = max(owners, key=lambda r: len(r.parts))
        parent = path.parent
        while parent != root and is_within(parent, root):
            if parent not in extra and parent not in roots:
                extra.append(parent)
            parent = parent.parent
    return extra


def build(
    *,
    argv: Iterable[str],
    cwd: Path,
    workspace: Path,
    allow_write: Iterable[Path | str],
    read_only: Iterable[Path | str],
    deny_read: Iterable[Path | str],
    env: Mapping[str, str],
    limits: Limits = NO_LIMITS,
    hide_also: Iterable[Path | str] = (),
    resolver: Resolver | None = None,
) -> SandboxSpec:
    """A spec from the policy's lists: resolved paths; mounts only for existing ones.

    `resolver` may be the one the policy was just compiled with (EffectivePolicy.resolver):
    its paths are then not looked up twice.
    """
    workspace = Path(os.path.realpath(workspace))
    real = resolver or Resolver()
    declared_writable = resolve([workspace, *allow_write], real)
    declared_read_only = resolve(read_only, real)
    declared_hidden = resolve([*deny_read, *hide_also], real)
    writable = [p for p in declared_writable if real.exists(str(p))]
    protected = [
        p
        for p in declared_read_only
        if real.exists(str(p)) and any(is_within(p, w) for w in writable)
    ]
    # A glob (built-in `~/.cargo/credentials*`) hides what matches now: bubblewrap can only
    # mount existing paths, and the workload cannot create new ones outside writable places.
    hidden_all: list[Path] = []
    for path in declared_hidden:
        if "*" in path.name:
            hidden_all += [m for m in resolve_existing(expand(str(path))) if m not in hidden_all]
        elif real.exists(str(path)):
            hidden_all.append(path)
    # A hidden path that contains the workspace would hide the workspace itself: keep
    # the deeper rule (the workspace) visible by ordering, see `mount_order`.
    hidden = _outermost([p for p in hidden_all if _visible(p, writable)], [*writable, *protected])
    return SandboxSpec(
        argv=tuple(argv),
        cwd=Path(os.path.realpath(cwd)),
        workspace=workspace,
        writable=tuple(writable),
        read_only=tuple(protected),
        hidden=tuple(hidden),
        env=dict(env),
        limits=limits,
        declared_writable=tuple(declared_writable),
        declared_read_only=tuple(declared_read_only),
        declared_hidden=tuple(declared_hidden),
    )


def _outermost(hidden: list[Path], mounts: list[Path]) -> list[Path]:
    """Hidden paths without those inside another hidden path (an agent socket in a hidden folder).

    Such a path is hidden already, and bubblewrap could not mount a file in an empty
    read-only folder. It stays when a writable or read-only mount between the two
    shows it again (a workspace inside a hidden folder).
    """

    def covered(path: Path) -> bool:
        return any(
            outer != path
            and is_within(path, outer)
            and not any(m != outer and is_within(m, outer) and is_within(path, m) for m in mounts)
            for outer in hidden
        )

    return [p for p in hidden if not covered(p)]


def _visible(path: Path, writable: list[Path]) -> bool:
    """False for paths the private /tmp and socket folders already hide (nothing to mask)."""
    covered = [Path(PRIVATE_TMP), *map(Path, SOCKET_DIRS)]
    if any(is_within(path, c) for c in covered):
        return any(is_within(path, w) for w in writable)
    return True


def mount_order(spec: SandboxSpec) -> list[tuple[str, Path]]:
    """(kind, path) for every filesystem rule, shallow first so the most specific rule wins.

    kinds: "bind" (writable), "ro" (read-only), "hide". At the same path, hiding wins.
    """
    rank = {"bind": 0, "ro": 1, "hide": 2}
    rules = [("bind", p) for p in spec.writable]
    rules += [("bind", p) for p in protect_ancestors(spec.read_only, spec.writable)]
    rules += [("ro", p) for p in spec.read_only]
    rules += [("hide", p) for p in spec.hidden]
    return sorted(rules, key=lambda r: (len(r[1].parts), rank[r[0]], str(r[1])))
