"""`krate build`: run a command as `krate run` does, then record its outputs and provenance.

Parses, calls `krate.provenance.build.run_build`, and exits with the workload's
status (1 when it succeeded but left no file under --out). The workload's
stdout is untouched; krate's own lines go to stderr.
"""

from __future__ import annotations

from typing import Annotated

import typer

from krate.cli.options import repeatable
from krate.cli.workload_options import workload_options

CommandArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="-- CMD [ARGS]...",
        help="The build command to run in the sandbox, after `--`.",
        show_default=False,
    ),
]
OutOpt = repeatable(
    "--out",
    "-o",
    metavar="PATH",
    help="An output file or folder (repeatable; at least one). Every file under it is "
    "stored and recorded. Example: --out dist/",
)
InputOpt = repeatable(
    "--input",
    "-i",
    metavar="GLOB",
    help="Record the digests of the files matching this glob, before the build "
    "(repeatable; ** for any depth). Example: --input 'src/**/*.py'",
)


@workload_options(
    hardlinked="krate build --allow-hardlinked-secrets --out dist -- make",
    as_root="sudo krate build --as-root --out dist -- make",
    verbose="krate build -v",
)
def build(
    command: CommandArg = None,
    out: OutOpt = None,
    input_: InputOpt = None,
    name: str = typer.Option(
        None, "--name", "-n", help="A name for this build. Example: --name release-1.2"
    ),
    *,
    options,
) -> int:
    """Run CMD as `krate run` does, then store every file under --out and record provenance.

    The record is an in-toto Statement v1 with an SLSA Provenance v1 predicate
    (`krate provenance NAME`). stdin, stdout, stderr and signals pass through; the
    exit status is CMD's (1 if it succeeded but left no file under --out).

    Example: krate build --out dist/ -- python -m build
    """
    from krate.cli.workload import build_workload

    return build_workload(options._replace(command=command, out=out, input_=input_, name=name))
