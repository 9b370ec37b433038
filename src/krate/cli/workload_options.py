"""The options `krate run` and `krate build` share, handed to each command as one Workload.

Both list them in the same order with the same help (their examples name the command);
cli/fastrun.py's tables must accept exactly these (tests/test_run_fastpath.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from krate.cli.complete import image_names
from krate.cli.options import ALLOW_BROAD_WORKSPACE, as_root_option, parameters, sharing
from krate.cli.policy_options import POLICY_OPTIONS
from krate.cli.workload import Workload

WORKDIR = typer.Option(
    None,
    "--workdir",
    metavar="DIR",
    help="Workspace (writable) and working directory; default: the current directory. "
    "Example: --workdir ~/src/app",
    file_okay=False,
    exists=True,
)

VM = typer.Option(
    False,
    "--vm",
    help="Run CMD in a micro-VM (its own kernel, QEMU on Linux): docs/vm.md. "
    "Example: krate run --vm alpine:3.20 -- make",
)
# A bare root folder instead of an image (the tests and bench boot one): hidden.
ROOTFS = typer.Option(
    None,
    "--rootfs",
    metavar="DIR",
    help="With --vm: a root folder to boot instead of an image (read-only). "
    "Example: --vm --rootfs ./root",
    file_okay=False,
    exists=True,
    hidden=True,
)


QUIET = typer.Option(
    False,
    "--quiet",
    "-q",
    help="No summary of refused connections when the run ends (they are still recorded: "
    "krate runs show last). Example: --quiet",
)


IMAGE = typer.Option(
    None,
    "--image",
    metavar="IMAGE",
    help="Run on this OCI image's root filesystem (read-only; the workspace at /work) "
    "instead of the host's; never pulls. Also written `krate run IMAGE -- CMD`. "
    "Example: --image alpine:3.20",
    autocompletion=image_names,
)


def workload_options(hardlinked: str, as_root: str, verbose: str):
    """Decorate a command ending in `*, options` with the shared options; `options` gets
    the Workload they make. The arguments are the help's examples for three of them."""
    return sharing(
        POLICY_OPTIONS
        + parameters(
            workdir=(Path, WORKDIR),
            image=(str, IMAGE),
            allow_hardlinked_secrets=(bool, _hardlinked_option(hardlinked)),
            as_root=(bool, as_root_option(as_root)),
            allow_broad_workspace=(bool, ALLOW_BROAD_WORKSPACE),
            verbose=(bool, _verbose_option(verbose)),
            quiet=(bool, QUIET),
            vm=(bool, VM),
            rootfs=(Path, ROOTFS),
        ),
        lambda **given: Workload.parsed(given),
    )


def _hardlinked_option(example: str):
    return typer.Option(
        False,
        "--allow-hardlinked-secrets",
        help="Run even if a hidden file has other hard links (one of them may be readable). "
        f"Example: {example}",
    )


def _verbose_option(example: str):
    return typer.Option(
        False, "--verbose", "-v", help=f"Say what krate did (on stderr). Example: {example}"
    )
