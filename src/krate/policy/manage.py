"""What the `krate policy` commands do: list, explain, init, trust and untrust.

Kept out of the CLI so the commands stay thin; this module reads policy files and
calls the store's trust functions, but never prints or reads os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from krate.errors import KrateError, NotFound, UsageError
from krate.policy import hosts, paths
from krate.policy.builtin import DESCRIPTIONS
from krate.policy.decide import EffectivePolicy
from krate.policy.layers import find_project_files, project_layer_name
from krate.policy.load import PROJECT_FILE, digest, load_file, read_bytes
from krate.policy.model import Decision, PolicyError

if TYPE_CHECKING:
    from krate.store import Store

KINDS = ("net", "read", "write", "env")

TEMPLATE = """\
# krate.toml: the krate policy for this project (docs: docs/policy.md).
#
# Until you run `krate policy trust`, this file may only NARROW the policy
# (the built-in profile plus your user policy); anything that would widen it is
# ignored and reported by `krate policy show` and by every run.
# Check it with `krate policy check krate.toml`.

# Start from a built-in profile: "strict" (no network), "default" (package
# registries) or "open" (any host).
# profile = "default"

[filesystem]
# Paths hidden from the workload (relative paths are relative to this folder).
# deny_read = ["secrets", ".env"]
# Extra places the workload may write (the workspace is always writable).
# allow_write = ["~/.cache/pip"]
# Paths that stay read-only even inside writable places.
# read_only = ["package-lock.json"]

[network]
# Replace the allowed hosts (an empty list means no network at all):
# allow = ["registry.npmjs.org", "*.example.com", "example.com:8443", "[::1]:5432"]
# Or add hosts to those from the layers below:
# add = ["api.example.com"]
# A mirror inside your network whose name resolves to a private address (refused
# by default against DNS rebinding); it must be allowed above too:
# private_ok = ["npm.corp.example"]

[env]
# Variable name patterns removed from the workload's environment (added to the defaults).
# strip = ["MY_COMPANY_*"]
# Names kept even if they match a strip pattern.
# pass = ["NPM_CONFIG_REGISTRY"]

[limits]
# cpu_seconds = 600
# memory_mb = 4096
# processes = 512
# wall_seconds = 3600
"""


def trust_state(path: Path, trusted: Mapping[str, str]) -> str:
    """`trusted`, `untrusted`, or `edited since trusted` (trust was revoked by the edit)."""
    recorded = trusted.get(str(path))
    if recorded is None:
        return "untrusted"
    try:
        current = digest(read_bytes(path))
    except PolicyError:
        return "edited since trusted"
    return "trusted" if current == recorded else "edited since trusted"


def list_policies(
    *, workspace: Path, user_policy_path: Path, trusted: Mapping[str, str]
) -> list[dict]:
    """Built-ins, the user policy and every project file that applies, each with its state."""
    rows = [
        {"name": name, "kind": "builtin", "path": None, "state": "built in", "description": text}
        for name, text in DESCRIPTIONS.items()
    ]
    user_exists = user_policy_path.is_file()
    rows.append(
        {
            "name": "user",
            "kind": "user",
            "path": str(user_policy_path),
            "state": "trusted (yours)" if user_exists else "absent",
            "description": "your policy, applied to every run",
        }
    )
    projects = find_project_files(workspace)
    for project in projects:
        rows.append(
            {
                "name": project_layer_name(project, projects[0]),
                "kind": "project",
                "path": str(project),
                "state": trust_state(project, trusted),
                "description": "krate.toml at or above the working folder",
            }
        )
    if not projects:
        rows.append(
            {
                "name": "project",
                "kind": "project",
                "path": None,
                "state": "absent",
                "description": f"no {PROJECT_FILE} at or above {workspace}",
            }
        )
    return rows


def explain(policy: EffectivePolicy, kind: str, subject: str, *, cwd: Path) -> Decision:
    """Ask the policy about one subject as a user typed it; paths are resolved first."""
    if kind == "net":
        host, port = net_subject(subject)
        return policy.decide_net(host, port)
    if kind == "env":
        return policy.decide_env(subject)
    if kind in ("read", "write"):
        why = paths.check_text(subject.replace("*", "x"))
        if why and "NUL" in why:
            raise UsageError(f"explain {kind}: {why}")
        literal = paths.normalize(subject, home=policy.home, base=str(cwd))
        resolved = paths.resolve(literal)
        decide = policy.decide_read if kind == "read" else policy.decide_write
        decision = decide(resolved)
        if decision.allowed and resolved != literal:
            # A denied symlink itself (or its folder) stays denied whatever it points at.
            through = decide(literal)
            if not through.allowed:
                return through
        return decision
    raise UsageError(f"unknown kind {kind!r}; use one of: {', '.join(KINDS)}")


URL_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "git": 9418, "ssh": 22}


def net_subject(subject: str) -> tuple[str, int]:
    """(host, port) from `HOST[:PORT]` (port 443) or a URL (`http://x.com/a`: x.com, 80)."""
    if "://" in subject:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(subject)
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"explain net: `{subject}`: {exc}") from None
        scheme = parts.scheme.lower()
        if not parts.hostname:
            raise UsageError(f"explain net: `{subject}` names no host")
        if port is None and scheme not in URL_PORTS:
            raise UsageError(
                f"explain net: `{subject}`: no default port for `{scheme}://`; add `:PORT`"
            )
        return parts.hostname, port if port is not None else URL_PORTS[scheme]
    try:
        return hosts.split_host_port(subject)
    except ValueError as exc:
        raise UsageError(f"explain net: {exc}") from None


def init_template(folder: Path, *, force: bool = False) -> Path:
    """Write the commented template as folder/krate.toml; overwrite only when forced."""
    target = folder / PROJECT_FILE
    if force and target.is_file():
        from krate.policy.edit import write_text

        return write_text(target, TEMPLATE)  # keeps the file's mode
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise KrateError(
            f"{target} already exists; edit it (`krate policy edit --project`), "
            "or pass --force to overwrite it"
        ) from None
    except OSError as exc:
        raise KrateError(f"cannot create {target}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(TEMPLATE)
    return target


def project_or_file(file: Path | None, cwd: Path) -> Path:
    """The file a trust command is about: the one named, or the only project file above cwd.

    A named file keeps its own name (only its folder is resolved): trust is recorded for
    the place a krate.toml acts, not for what a symlink there points at.
    """
    if file is None:
        found = find_project_files(cwd)
        if not found:
            raise NotFound(f"no {PROJECT_FILE} at or above {cwd}; name the file to trust")
        if len(found) > 1:
            names = ", ".join(str(p) for p in found)
            raise UsageError(f"several {PROJECT_FILE} files apply here ({names}); name one")
        return found[0]
    path = file if file.is_absolute() else cwd / file
    return Path(paths.resolve(str(path.parent))) / path.name


def validate_for_trust(path: Path) -> str:
    """Refuse an invalid file (`FILE:LINE: ...`); return the SHA-256 of the bytes validated."""
    return load_file(path, name="project", trusted=True).sha256


def trust_file(store: Store, path: Path, sha256: str) -> None:
    """Record `sha256` (from validate_for_trust: the exact bytes checked) as trusted."""
    from krate.store import trust

    trust.trust(store, str(path), sha256)


def untrust_file(store: Store, path: Path) -> None:
    from krate.store import trust

    if trust.untrust(store, str(path)) is None:
        raise NotFound(f"{path} is not trusted")
