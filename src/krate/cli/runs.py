"""`krate runs`: what ran, under which policy, how it ended, and what the policy decided."""

from __future__ import annotations

import typer

from krate.cli import views
from krate.cli.complete import run_refs
from krate.cli.options import JSON

app = typer.Typer(
    help="Past `krate run`s: list them, show one with its decisions.\n\n"
    "Example: krate runs show last",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    limit: int = typer.Option(20, "--limit", min=1, help="Show the newest N runs."),
    json_: bool = JSON,
) -> None:
    """List runs, newest first. A run whose krate was killed shows as `interrupted`.

    Example: krate runs list --limit 5 --json | jq '.[].exit_code'
    """
    views.runs_list(limit, json_)


@app.command()
def show(
    run: str = typer.Argument(
        ...,
        metavar="ID|last",
        autocompletion=run_refs,
        help="A run id, a unique prefix, or `last`.",
    ),
    json_: bool = JSON,
) -> None:
    """Show one run: command (secrets redacted), policy, outcome, and every decision.

    Example: krate runs show last --json | jq .decisions
    """
    views.runs_show(run, json_)
