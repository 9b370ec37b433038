"""`krate image`: OCI images in krate's store.

Only `pull` lives on this branch (cli/image_pull.py); the other image commands join
this group where they are written.
"""

from __future__ import annotations

import typer

from krate.cli.image_pull import pull

app = typer.Typer(
    help="OCI images in krate's store: pull them from a registry.\n\n"
    "Example: krate image pull ghcr.io/me/tools:1.4",
    no_args_is_help=True,
)
app.command("pull")(pull)
