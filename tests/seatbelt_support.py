"""Seatbelt specs built the way a real run builds them, for the golden and decision tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from krate.policy import Flags, effective_policy
from krate.sandbox import seatbelt
from krate.sandbox.spec import build

HOME = Path("/Users/alice")
WS = HOME / "src" / "app"
DATA = HOME / "Library" / "Application Support" / "krate"
RUN_TMP = DATA / "run" / "01m8d0000000abcd" / "tmp"
CACHE = "/private/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/C"  # DARWIN_USER_CACHE_DIR


def spec_for(
    tmp_path: Path,
    flags: Flags,
    user_policy: str | None = None,
    *,
    workspace: Path = WS,
    env: Mapping[str, str] | None = None,
):
    """(spec with the run's TMPDIR, effective policy) for a policy shape, as `krate run` does."""
    policy_path = tmp_path / "policy.toml"
    if user_policy is not None:
        policy_path.write_text(user_policy)
    policy = effective_policy(
        workspace=workspace,
        home=HOME,
        user_policy_path=policy_path,
        trusted={},
        flags=flags,
        private_dirs=(DATA,),
    )
    spec = build(
        argv=("make",),
        cwd=workspace,
        workspace=policy.workspace,
        allow_write=policy.allow_write,
        read_only=policy.read_only,
        deny_read=policy.deny_read,
        env=dict(env or {}),
    )
    return seatbelt.with_tmpdir(spec, RUN_TMP), policy
