"""Policy options shared by `krate run`, `krate build`, `policy show` and `policy explain`.

Only typer and the standard library at module top (start-up time); the policy
package and the store are imported when a policy is actually loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from krate.cli.complete import policy_names

if TYPE_CHECKING:
    from krate.policy import EffectivePolicy, Flags

PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        metavar="NAME|FILE",
        autocompletion=policy_names,
        help="Built-in profile (strict, default, open) or a policy file you choose (trusted). "
        "Example: --policy strict",
    ),
]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host",
        metavar="HOST",
        help="Also allow this host pattern (repeatable). "
        "Example: --allow-host api.example.com:8443",
    ),
]
AllowWriteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-write",
        metavar="PATH",
        help="Also allow writing here (repeatable). Example: --allow-write ~/.cache/pip",
    ),
]
DenyReadOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--deny-read",
        metavar="PATH",
        help="Also hide this path (repeatable). Example: --deny-read ~/notes",
    ),
]
NoNetworkOpt = Annotated[
    bool,
    typer.Option("--no-network", help="No network at all for the workload. Example: --no-network"),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        metavar="NAME",
        help="Pass this variable through even if it looks secret (repeatable). "
        "Example: --env NPM_TOKEN",
    ),
]


def flags_from(
    policy: str | None,
    allow_host: list[str] | None,
    allow_write: list[str] | None,
    deny_read: list[str] | None,
    no_network: bool,
    env: list[str] | None,
) -> Flags:
    """The parsed options as the policy's command-line layer."""
    from krate.policy import Flags

    return Flags(
        policy=policy or None,
        allow_host=tuple(allow_host or ()),
        allow_write=tuple(allow_write or ()),
        deny_read=tuple(deny_read or ()),
        no_network=bool(no_network),
        env=tuple(env or ()),
    )


def read_trust(paths) -> tuple[dict[str, str], list[str]]:
    """Trusted project files from the store (read-only); unreadable trust means untrusted."""
    from krate.errors import StoreError
    from krate.store import open_store
    from krate.store.trust import trusted_files

    try:
        with open_store(paths, readonly=True) as store:
            return trusted_files(store), []
    except StoreError as exc:
        return {}, [f"trust records unreadable ({exc}); project files are treated as untrusted"]


def load_effective(flags: Flags, workspace: Path) -> EffectivePolicy:
    """The effective policy for a run in `workspace` under these flags."""
    from krate.paths import Paths
    from krate.policy import effective_policy

    paths = Paths.from_env(os.environ)
    trusted, notes = read_trust(paths)
    return effective_policy(
        workspace=workspace,
        home=Path(os.path.expanduser("~")),
        user_policy_path=paths.user_policy,
        trusted=trusted,
        flags=flags,
        private_dirs=(paths.data_dir, paths.config_dir),
        notes=notes,
    )
