"""`krate builds`: the recorded builds (list, show ID, last).

Only typer and the standard library at the top; the domain and the store are
imported inside each command.
"""

from __future__ import annotations

import typer

from krate.cli import views
from krate.cli.common import paths
from krate.cli.options import JSON, NEWEST

app = typer.Typer(
    help="Recorded builds and their provenance.\n\nExample: krate builds last",
    no_args_is_help=True,
)


@app.command("list")
def list_(limit: int = NEWEST, json_: bool = JSON) -> None:
    """List builds, newest last: id, when, name, run, number of outputs.

    Example: krate builds list --json | jq -r '.[].id'
    """
    views.builds_list(limit, json_)


@app.command()
def show(
    build_id: str = typer.Argument(..., help="A build id, a unique prefix of one, or `last`."),
    json_: bool = JSON,
) -> None:
    """Show one build: its run, command, outputs and their digests.

    Example: krate builds show last --json | jq .statement.subject
    """
    _show(build_id, json_)


@app.command()
def last(json_: bool = JSON) -> None:
    """Show the newest build (same as `krate builds show last`).

    Example: krate builds last
    """
    _show("last", json_)


def _show(ref: str, json_: bool) -> None:
    import json

    from krate import render
    from krate.provenance import build as domain
    from krate.store import artifacts as rows
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        build = domain.find_build(store, ref)
        outputs = rows.artifacts_of_build(store, build.id)
    if json_:
        render.print_json({**build.to_dict(), "artifacts": [a.to_dict() for a in outputs]})
        return
    statement = json.loads(build.statement)
    ext = statement["predicate"]["buildDefinition"]["externalParameters"]
    lines = [
        ("build", build.id),
        ("name", build.name or ""),
        ("run", build.run_id or ""),
        ("recorded", build.created),
        ("command", " ".join(ext.get("argv", []))),
        ("in", build.workdir),
        ("record", f"sha256:{build.statement_sha256}"),
    ]
    for key, value in lines:
        typer.echo(f"{key:<8} {value}")
    typer.echo(f"outputs ({len(outputs)})")
    for a in outputs:
        typer.echo(f"  {a.digest}  {a.size:>12}  {a.name}")
