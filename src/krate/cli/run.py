"""`krate run`: run a command isolated under the effective policy, and record it.

Parses, calls `krate.runs.execute`, and exits with the workload's status. Silent
on success unless `-v`; says why when the run was refused, timed out or cut short.
"""

from __future__ import annotations

import typer

from krate.cli.workload_options import workload_options

COMMAND_OPT = typer.Argument(
    None,
    metavar="-- CMD [ARGS]...",
    help="The command to run in the sandbox, after `--`.",
    show_default=False,
)


@workload_options(
    hardlinked="krate run --allow-hardlinked-secrets -- make",
    as_root="sudo krate run --as-root -- make install",
    verbose="krate run -v -- ls",
)
def run(command: list[str] = COMMAND_OPT, *, options) -> int:
    """Run CMD isolated: read-only system, writable workspace, secrets hidden and stripped.

    stdin, stdout, stderr and signals pass through; the exit status is CMD's
    (125: krate failed before CMD started, 126: not executable, 127: not found).

    `krate run [OPTIONS] IMAGE -- CMD` runs CMD on an OCI image's read-only root (a first
    word followed by `--` names an image; see `krate image`); it never pulls.

    Example: krate run -- npm install
    """
    from krate.cli.workload import run_workload

    return run_workload(options._replace(command=command))
