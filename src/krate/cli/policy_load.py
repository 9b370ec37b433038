"""Turning policy options into the effective policy: flags, trust records, layers.

Standard library only at the top, no typer: `krate run`'s fast path (cli/fastrun.py)
loads the policy through here without importing the CLI framework.
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.policy import EffectivePolicy, Flags


def flags_from(
    policy: str | None,
    allow_host: list[str] | None,
    allow_write: list[str] | None,
    deny_read: list[str] | None,
    no_network: bool,
    env: list[str] | None,
    allow_private_host: list[str] | None = None,
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
        allow_private_host=tuple(allow_private_host or ()),
    )


def read_trust(paths) -> tuple[dict[str, str], list[str]]:
    """Trusted project files from the store (read-only); unreadable trust means untrusted.

    Only trust the record backs counts; a note names each trust row it does not back.
    """
    from krate.errors import StoreError
    from krate.store import open_store
    from krate.store.trust import checked_files

    try:
        with open_store(paths, readonly=True) as store:
            return checked_files(store)
    except StoreError as exc:
        return {}, [f"trust records unreadable ({exc}); project files are treated as untrusted"]


def load_effective(flags: Flags, workspace: Path) -> EffectivePolicy:
    """The effective policy for a run in `workspace` under these flags."""
    from krate.paths import Paths
    from krate.policy import effective_policy
    from krate.policy.layers import find_project_files

    paths = Paths.from_env(os.environ)
    # Trust matters only for project files; without one, the store is not opened.
    if not find_project_files(workspace.absolute()):
        trusted, notes = {}, []
    else:
        trusted, notes = read_trust(paths)
    return effective_policy(
        workspace=workspace,
        home=Path(os.path.expanduser("~")),
        real_home=account_home(),
        user_policy_path=paths.user_policy,
        trusted=trusted,
        flags=flags,
        private_dirs=(paths.data_dir, paths.config_dir),
        notes=notes,
    )


def account_home() -> Path | None:
    """The home folder of the real user in the password database, whatever $HOME says.

    Secret stores are hidden under it as well as under $HOME: `HOME=/var/tmp/x krate run`
    must not leave the real `~/.ssh` readable. None when the uid has no entry (a
    container with an arbitrary uid): then $HOME is all there is.
    """
    import pwd  # a built-in C module: nothing to load on the run path

    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except (KeyError, OSError):
        return None
    return Path(home) if home.startswith("/") and home != "/" else None
