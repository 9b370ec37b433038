"""Policy options shared by `krate run`, `krate build`, `policy show` and `policy explain`.

Only typer and the standard library at module top (start-up time); the policy
package and the store are imported when a policy is actually loaded.
"""

from __future__ import annotations

from typing import Annotated

import typer

from krate.cli.complete import policy_names
from krate.cli.options import parameters, repeatable, sharing

# The loading itself lives in a typer-free module (krate run's fast path uses it).
from krate.cli.policy_load import flags_from, load_effective, read_trust

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
AllowHostOpt = repeatable(
    "--allow-host",
    metavar="HOST",
    help="Also allow this host pattern (repeatable). Example: --allow-host api.example.com:8443",
)
AllowPrivateHostOpt = repeatable(
    "--allow-private-host",
    metavar="HOST",
    help="Let this allowed host name resolve to a private, loopback or link-local address "
    "(a mirror inside your network; refused by default against DNS rebinding; repeatable). "
    "Example: --allow-private-host npm.corp.example",
)
AllowWriteOpt = repeatable(
    "--allow-write",
    metavar="PATH",
    help="Also allow writing here (repeatable). Example: --allow-write ~/.cache/pip",
)
DenyReadOpt = repeatable(
    "--deny-read",
    metavar="PATH",
    help="Also hide this path (repeatable). Example: --deny-read ~/notes",
)
NoNetworkOpt = Annotated[
    bool,
    typer.Option("--no-network", help="No network at all for the workload. Example: --no-network"),
]
EnvOpt = repeatable(
    "--env",
    metavar="NAME",
    help="Pass this variable through even if it looks secret (repeatable). "
    "Example: --env NPM_TOKEN",
)

# The order --help lists them in (`flags_from` takes them by name).
POLICY_OPTIONS = parameters(
    policy=(PolicyOpt, None),
    allow_host=(AllowHostOpt, None),
    allow_private_host=(AllowPrivateHostOpt, None),
    allow_write=(AllowWriteOpt, None),
    deny_read=(DenyReadOpt, None),
    no_network=(NoNetworkOpt, False),
    env=(EnvOpt, None),
)
# A command ending in `*, flags` gets these options, and `flags` the policy's flag layer.
policy_options = sharing(POLICY_OPTIONS, flags_from)

__all__ = [
    "POLICY_OPTIONS",
    "flags_from",
    "load_effective",
    "policy_options",
    "read_trust",
]
