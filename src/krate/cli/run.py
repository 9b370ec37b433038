"""`krate run`: run a command isolated under the effective policy, and record it.

Parses, calls `krate.runs.execute`, and exits with the workload's status. Silent
on success unless `-v`; says why when the run was refused, timed out or cut short.
"""

from __future__ import annotations

from pathlib import Path

import typer

from krate.cli.options import ALLOW_BROAD_WORKSPACE, as_root_option
from krate.cli.policy_options import (
    AllowHostOpt,
    AllowWriteOpt,
    DenyReadOpt,
    EnvOpt,
    NoNetworkOpt,
    PolicyOpt,
)

COMMAND_OPT = typer.Argument(
    None,
    metavar="-- CMD [ARGS]...",
    help="The command to run in the sandbox, after `--`.",
    show_default=False,
)

WORKDIR_OPT = typer.Option(
    None,
    "--workdir",
    metavar="DIR",
    help="Workspace (writable) and working directory; default: the current directory. "
    "Example: --workdir ~/src/app",
    file_okay=False,
    exists=True,
)

ALLOW_HARDLINKED_SECRETS_OPT = typer.Option(
    False,
    "--allow-hardlinked-secrets",
    help="Run even if a hidden file has other hard links (one of them may be readable). "
    "Example: krate run --allow-hardlinked-secrets -- make",
)

AS_ROOT_OPT = as_root_option("sudo krate run --as-root -- make install")

VERBOSE_OPT = typer.Option(
    False, "--verbose", "-v", help="Say what krate did (on stderr). Example: krate run -v -- ls"
)


def run(
    command: list[str] = COMMAND_OPT,
    policy: PolicyOpt = None,
    allow_host: AllowHostOpt = None,
    allow_write: AllowWriteOpt = None,
    deny_read: DenyReadOpt = None,
    no_network: NoNetworkOpt = False,
    env: EnvOpt = None,
    workdir: Path = WORKDIR_OPT,
    allow_hardlinked_secrets: bool = ALLOW_HARDLINKED_SECRETS_OPT,
    as_root: bool = AS_ROOT_OPT,
    allow_broad_workspace: bool = ALLOW_BROAD_WORKSPACE,
    verbose: bool = VERBOSE_OPT,
) -> int:
    """Run CMD isolated: read-only system, writable workspace, secrets hidden and stripped.

    stdin, stdout, stderr and signals pass through; the exit status is CMD's
    (125: krate failed before CMD started, 126: not executable, 127: not found).

    Example: krate run -- npm install
    """
    from krate.cli.workload import run_workload

    return run_workload(
        command, policy, allow_host, allow_write, deny_read, no_network, env, workdir,
        allow_hardlinked_secrets, verbose, as_root, allow_broad_workspace,
    )  # fmt: skip
