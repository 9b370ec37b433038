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

import sys
from typing import Any

import typer

from krate.cli.common import paths
from krate.cli.options import JSON
from krate.cli.registry import _credentials, _notices, _start_transport, _store_opener

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
    from krate import render

    transport = _start_transport()
    try:
        from krate.images import pull as domain
        from krate.registry import client
        from krate.store import open_store

        reference = domain.parse_reference(ref)
        explicit = platform is not None
        wanted = domain.parse_platform(platform) if explicit else domain.host_platform()

        def credentials():  # only if the registry asks: keyring stays unloaded otherwise
            return _credentials(reference.registry) or (
                _credentials(reference.endpoint)
                if reference.endpoint != reference.registry
                else None
            )

        if plain_http:
            render.message("krate: " + client.connection_for(reference.endpoint, True).warning)
        notices = _notices(reference.endpoint)
        with open_store(paths()) as store, _Progress(quiet) as progress:

            def on_message(message: dict[str, Any]) -> None:
                notices(message)
                progress.update(message)

            result = domain.pull(
                transport,
                store=store,
                open_store=_store_opener(),
                paths=paths(),
                ref=reference,
                platform=wanted,
                platform_explicit=explicit,
                ask_credentials=credentials,
                plain_http=plain_http,
                on_message=on_message,
            )
    finally:
        transport.abandon()
    if not quiet:
        where = f" ({result.platform})" if result.platform else ""
        kept = f", {len(result.present)} already in the store" if result.present else ""
        render.message(
            f"pulled {result.ref}{where}: {_size(result.bytes_received)} in "
            f"{len(result.fetched)} blob(s){kept}; manifest {result.manifest_digest}"
        )
    if json_:
        render.print_json(result.to_dict())
    else:
        typer.echo(result.image.config_digest)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class _Progress:
    """rich bars on stderr when it is a terminal (one per blob); nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None
        self.quiet = quiet
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        if not self.quiet and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            from krate import render

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=render.console(stderr=True),
                transient=True,
            )
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, message: dict[str, Any]) -> None:
        if self.bar is None or message.get("type") not in ("progress", "blob"):
            return
        digest = str(message.get("digest"))
        task = self.tasks.get(digest)
        total = message.get("total", message.get("size"))
        if task is None:
            task = self.tasks[digest] = self.bar.add_task(digest[7:19], total=total)
        done = message.get("done", total)
        self.bar.update(task, completed=done)
