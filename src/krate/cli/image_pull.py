"""`krate image pull REF`: the one image command that reaches the network.

Like push, its registry transport is started at entry (cli/main.py), before the
lockdown and before any third-party import; this command takes it over, locks
down, opens the store and sends the job; keyring is loaded only if the registry
asks for a login (an anonymous registry never loads it), while the transport is
already connected. Prints the image's config digest (its
identity) on stdout; progress and the summary go to stderr. Only typer and the
standard library at the top.
"""

from __future__ import annotations

import typer

from krate.cli.options import JSON

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386", "linux/ppc64le")
PLATFORM = typer.Option(
    None,
    "--platform",
    metavar="OS/ARCH",
    autocompletion=lambda: list(PLATFORMS),
    help="The platform to pull from a multi-platform image (default: this machine's, "
    "linux/<arch>). Example: --platform linux/arm64",
)
PLAIN_HTTP = typer.Option(
    False,
    "--plain-http",
    help="Use plain HTTP (unencrypted) even though the registry is not on this machine. "
    "Example: krate image pull 10.0.0.5:5000/me/tools:1 --plain-http",
)
QUIET = typer.Option(
    False,
    "--quiet",
    "-q",
    help="No progress and no summary on stderr. Example: krate image pull -q ghcr.io/me/tools:1",
)


def pull(
    ref: str = typer.Argument(
        ..., help="The image: registry/repository:tag or registry/repository@sha256:..."
    ),
    platform: str = PLATFORM,
    plain_http: bool = PLAIN_HTTP,
    quiet: bool = QUIET,
    json_: bool = JSON,
) -> None:
    """Download an image from an OCI registry into krate's store; prints its config digest.

    With --json: the config digest as `image`, the manifest (and index) digest, the platform,
    the blobs fetched and those already in the store.

        Every blob's size and sha256 are checked as it arrives; blobs already in the store
        are not downloaded again. `krate run` never pulls: this is the only way in from a
        registry (see also `krate image import`).

        Example: krate image pull ghcr.io/me/tools:1.4 --platform linux/amd64
    """
    from krate.cli.image_pull_run import pull as run

    run(ref=ref, platform=platform, plain_http=plain_http, quiet=quiet, json_=json_)
