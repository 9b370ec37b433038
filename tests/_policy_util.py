"""Helpers shared by the test_policy_* modules: build policies from patterns or real files."""

from __future__ import annotations

from pathlib import Path

from krate.policy import EffectivePolicy, Flags, effective_policy
from krate.policy.layers import compile_layers
from krate.policy.model import Item, Layer

NO_WORKSPACE = Path("/nonexistent-krate-workspace")


def net_policy(allow: list[str] | tuple[str, ...]) -> EffectivePolicy:
    """A policy whose only network rules are `allow` (one trusted layer)."""
    layer = Layer(
        name="builtin:test",
        trusted=True,
        base_dir=NO_WORKSPACE,
        net_allow=tuple(Item(text) for text in allow),
    )
    return compile_layers([layer], workspace=NO_WORKSPACE, home="/home/u")


def effective(
    workspace: Path,
    home: Path,
    *,
    user_policy: Path | None = None,
    trusted: dict[str, str] | None = None,
    flags: Flags | None = None,
) -> EffectivePolicy:
    return effective_policy(
        workspace=workspace,
        home=home,
        user_policy_path=user_policy or home / "no-user-policy.toml",
        trusted=trusted or {},
        flags=flags or Flags(),
    )
