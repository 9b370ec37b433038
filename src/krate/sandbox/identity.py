"""Who the workload runs as when krate itself runs as root.

bubblewrap maps the sandbox's uid to its caller's. As real root that is host uid
0, which passes every uid check the kernel makes (sysctls, root-owned files)
whatever capabilities were dropped. So a root krate starts the sandbox as the
workspace's owner (the launcher child sets that user's groups, gid and uid before
bubblewrap runs, which then uses an unprivileged user namespace), refuses a
root-owned workspace, and keeps host root only with `--as-root`, recorded.

`Identity.reaches` answers "can this user walk to this path" from mode bits, as
bubblewrap (running as that user) will have to: a path the user cannot reach is
left out of the mounts, since neither bubblewrap nor the workload can reach it.
It errs towards "reachable" (an ACL may grant more than the mode bits show): the
worst case is a mount bubblewrap cannot make, which fails the run (125).
"""

from __future__ import annotations

import os
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.sandbox.backend import Backend

OVERFLOW_GID = 65534  # nogroup: for an owner with no account, rather than root's group
RULE_AS_ROOT = "--as-root"
RULE_ROOT_WORKSPACE = "root run in a root-owned workspace"
RULE_UNREACHABLE = "root run in a workspace its owner cannot reach"
RULE_NO_DROP = "root run on a backend that cannot run as the workspace owner"


class Identity(NamedTuple):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.name, "uid": self.uid, "gid": self.gid}

    def reaches(self, path: Path, *, inside: bool = False) -> bool:
        """Whether this user may search every folder from / down to `path`'s parent
        (and `path` itself with `inside`)."""
        folders = [*reversed(path.parents), *([path] if inside else [])]
        for folder in folders:
            try:
                st = os.stat(folder)
            except OSError:
                return True  # gone since the spec was made: let bubblewrap say so
            if not self.may_search(folder, st):
                return False
        return True

    def may_search(self, folder: Path, st: os.stat_result) -> bool:
        mode = st.st_mode
        if st.st_uid == self.uid:
            return bool(mode & 0o100)
        in_group = st.st_gid in self.groups
        if mode & (0o010 if in_group else 0o001):
            return True
        # Closed by the mode bits; an ACL may still grant search (its mask is the group bits).
        return bool(mode & 0o010) and _has_acl(folder)


def _has_acl(folder: Path) -> bool:
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return True  # cannot tell: assume it may
    try:
        getxattr(folder, "system.posix_acl_access")
    except OSError:
        return False
    return True


def owner_of(path: Path) -> Identity | None:
    """The account owning `path`; None when that is root."""
    st = os.stat(path)
    if st.st_uid == 0:
        return None
    import pwd

    try:
        entry = pwd.getpwuid(st.st_uid)
    except KeyError:
        gid = st.st_gid or OVERFLOW_GID
        return Identity(str(st.st_uid), st.st_uid, gid, (gid,))
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, Path(entry.pw_dir))


class Choice(NamedTuple):
    """What a run's identity comes to: whom to run as, what to record, or why to refuse."""

    run_as: Identity | None = None
    record: dict[str, Any] = {}
    decision: dict[str, Any] | None = None
    refusal: KrateError | None = None


def choose(workspace: Path, cwd: Path, *, as_root: bool, euid: int, backend: Backend) -> Choice:
    """The identity for a run of krate with effective uid `euid` in `workspace`."""
    if euid != 0:
        return Choice()  # --as-root means nothing without root
    if as_root:
        return Choice(
            record={"as_root": True},
            decision=_decision("allow", RULE_AS_ROOT, "flags", "root"),
        )
    fix = (
        "run krate as an ordinary user, or pass --as-root to accept running the workload "
        "with host root's identity (capabilities dropped, system and /proc knobs read-only)"
    )
    if not backend.capabilities().run_as_owner:
        why = f"the {backend.name} sandbox cannot run the workload as the workspace's owner"
        return _refuse(why, fix, RULE_NO_DROP, workspace)
    owner = owner_of(workspace)
    if owner is None:
        why = f"the workspace {workspace} belongs to root, so the workload would run as host root"
        return _refuse(why, fix, RULE_ROOT_WORKSPACE, workspace)
    for path in dict.fromkeys((workspace, cwd)):
        if not owner.reaches(path, inside=True):
            why = (
                f"the workload would run as {owner.name}, the owner of {workspace}, "
                f"who cannot reach {path}"
            )
            return _refuse(why, fix, RULE_UNREACHABLE, workspace)
    return Choice(run_as=owner, record={"run_as": owner.to_dict()})


def _refuse(why: str, fix: str, rule: str, workspace: Path) -> Choice:
    return Choice(
        decision=_decision("deny", rule, "builtin", str(workspace)),
        refusal=KrateError(f"refusing to run as root: {why}; {fix}", exit_code=EXIT_KRATE_FAILED),
    )


def _decision(verdict: str, rule: str, layer: str, subject: str) -> dict[str, Any]:
    return {"area": "identity", "verdict": verdict, "rule": rule, "layer": layer,
            "subject": subject}  # fmt: skip


def home_equivalents(hidden: tuple[Path, ...], home: Path, owner: Identity) -> list[Path]:
    """The hidden paths under the caller's home, again under the owner's home.

    The policy hides root's ~/.ssh; a workload running as the owner must not read the
    owner's ~/.ssh either.
    """
    if owner.home is None or owner.home == home:
        return []
    out = []
    for path in hidden:
        if path == home or home in path.parents:
            out.append(owner.home / path.relative_to(home))
    return out
