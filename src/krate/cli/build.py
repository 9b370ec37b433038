"""`krate build`: run a command as `krate run` does, then record its outputs and provenance.

Parses, calls `krate.provenance.build.run_build`, and exits with the workload's
status (1 when it succeeded but left no file under --out). The workload's
stdout is untouched; krate's own lines go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

CommandArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="-- CMD [ARGS]...",
        help="The build command to run in the sandbox, after `--`.",
        show_default=False,
    ),
]
OutOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--out",
        "-o",
        metavar="PATH",
        help="An output file or folder (repeatable; at least one). Every file under it is "
        "stored and recorded. Example: --out dist/",
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="GLOB",
        help="Record the digests of the files matching this glob, before the build "
        "(repeatable; ** for any depth). Example: --input 'src/**/*.py'",
    ),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        metavar="DIR",
        help="Workspace (writable) and working directory; default: the current directory. "
        "Example: --workdir ~/src/app",
        file_okay=False,
        exists=True,
    ),
]


def build(
    command: CommandArg = None,
    out: OutOpt = None,
    input_: InputOpt = None,
    name: str = typer.Option(
        None, "--name", "-n", help="A name for this build. Example: --name release-1.2"
    ),
    policy: PolicyOpt = None,
    allow_host: AllowHostOpt = None,
    allow_write: AllowWriteOpt = None,
    deny_read: DenyReadOpt = None,
    no_network: NoNetworkOpt = False,
    env: EnvOpt = None,
    workdir: WorkdirOpt = None,
    allow_hardlinked_secrets: bool = typer.Option(
        False,
        "--allow-hardlinked-secrets",
        help="Run even if a hidden file has other hard links (one of them may be readable). "
        "Example: krate build --allow-hardlinked-secrets --out dist -- make",
    ),
    as_root: bool = as_root_option("sudo krate build --as-root --out dist -- make"),
    allow_broad_workspace: bool = ALLOW_BROAD_WORKSPACE,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Say what krate did (on stderr). Example: krate build -v"
    ),
) -> int:
    """Run CMD as `krate run` does, then store every file under --out and record provenance.

    The record is an in-toto Statement v1 with an SLSA Provenance v1 predicate
    (`krate provenance NAME`). stdin, stdout, stderr and signals pass through; the
    exit status is CMD's (1 if it succeeded but left no file under --out).

    Example: krate build --out dist/ -- python -m build
    """
    from krate.cli.workload import build_workload

    return build_workload(
        command, out, input_, name, policy, allow_host, allow_write, deny_read, no_network,
        env, workdir, allow_hardlinked_secrets, verbose, as_root, allow_broad_workspace,
    )  # fmt: skip
