"""`krate info`: what this krate is and where it keeps things."""

from __future__ import annotations

import typer

from krate.cli import views


def info(
    json_: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show version, folders, database, sandbox and keyring backends, and telemetry (none).

    Example: krate info --json | jq .data_dir
    """
    views.info(json_)
