"""`krate audit`: the tamper-evident record: note, list, show, head, verify."""

from __future__ import annotations

import json

import typer

from krate.cli import views
from krate.cli.common import paths
from krate.cli.complete import run_ids
from krate.cli.options import JSON, NEWEST
from krate.plural import counted

app = typer.Typer(
    help="The tamper-evident record of everything krate did.\n\n"
    "Example: krate audit list --since 1h",
    no_args_is_help=True,
)


@app.command()
def note(message: str = typer.Argument(..., help="The text to record.")) -> None:
    """Append a note of your own to the record (kind `user.note`); prints its seq.

    Example: krate audit note "about to run the vendor's installer"
    """
    from krate.store import events, open_store

    with open_store(paths()) as store:
        event = events.append(store, "user.note", {"message": message})
    typer.echo(event.seq)


@app.command("list")
def list_(
    since: str = typer.Option(
        None, "--since", help="From this long ago (30m, 1h, 2d) or this date/time."
    ),
    until: str = typer.Option(
        None, "--until", help="Before this long ago or this date/time. Example: --until 2026-11-01"
    ),
    kind: str = typer.Option(None, "--kind", help="Only kinds starting with this, e.g. `run.`."),
    run: str = typer.Option(
        None,
        "--run",
        autocompletion=run_ids,
        help="Only events of this run id (TAB completes ids). Example: --run 01KB2X9Q7M4PTA3C",
    ),
    limit: int = NEWEST,
    json_: bool = JSON,
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON object per line."),
) -> None:
    """List events, newest last.

    Example: krate audit list --since 1h --kind run. --jsonl | jq .data
    """
    views.audit_list(since, until, kind, run, limit, json_, jsonl)


@app.command()
def show(
    seq: int = typer.Argument(..., help="The event's sequence number."), json_: bool = JSON
) -> None:
    """Show one event in full.

    Example: krate audit show 42 --json
    """
    from krate import render
    from krate.errors import NotFound
    from krate.store import events, open_store

    with open_store(paths(), readonly=True) as store:
        event = events.get(store, seq)
        newest = events.head(store).seq
    if event is None:
        held = f"the record holds events 1..{newest}" if newest else "the record is empty"
        raise NotFound(f"no event {seq} ({held})")
    if json_:
        render.print_json(event.to_dict())
        return
    for key, value in event.to_dict().items():
        if key == "data":
            value = json.dumps(value, ensure_ascii=False, indent=2)
        typer.echo(f"{key}: {value if value is not None else ''}")


@app.command()
def head(json_: bool = JSON) -> None:
    """Print the newest seq and hash: write it down or publish it to detect rewrites later.

    Example: krate audit head --json
    """
    views.audit_head(json_)


@app.command()
def verify(json_: bool = JSON) -> None:
    """Check that the record was not edited, cut back, emptied, replaced or rolled back.

    Checks the database file (SQLite's integrity check), that no event was edited,
    deleted, inserted, reordered or cut off the end, the head copy beside the database
    (krate.head), and that every index row says what its events say. Exit 0 when all
    holds, 1 naming the first problem otherwise.

    Example: krate audit verify && echo ok
    """
    from krate import render
    from krate.store import open_store, record

    with open_store(paths(), readonly=True) as store:
        result = record.verify(store)
    if json_:
        render.print_json(result.to_dict())
    elif result.ok:
        typer.echo(f"{counted(result.events, 'event')}, chain intact, head {result.head}")
        if result.note:
            render.message(f"krate: note: {result.note}")
    elif result.first_bad_seq is not None:
        render.message(f"krate: chain broken at event {result.first_bad_seq}: {result.reason}")
    else:
        render.message(f"krate: {result.reason}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def network(
    prove: bool = typer.Option(
        False,
        "--prove",
        help="Run the self-test: every command with no network purpose, watched by four layers "
        "(kernel, guard, strace + empty network namespace, static checks). Exit 0 only when all "
        "checked evidence agrees.",
    ),
    json_: bool = JSON,
) -> None:
    """Every outbound connection krate itself made, by the command that asked; and the lockdown.

    Workload connections (through the egress proxy) are listed separately. With --prove,
    demonstrate that commands without a network purpose open no IP socket at all.

    Example: krate audit network --prove --json | jq .proven
    """
    if prove:
        _prove(json_)
        return
    views.audit_network(json_)


def _prove(json_: bool) -> None:
    import os
    import sys
    from pathlib import Path

    import typer.main

    import krate
    from krate import render
    from krate.cli.app import app as root_app
    from krate.netguard import proof, proof_early

    result = proof.prove(
        typer.main.get_command(root_app),
        krate=proof_early.krate_command(),
        python=sys.executable,
        environ=dict(os.environ),
        package_dir=Path(krate.__file__).parent,
        sys_path=list(sys.path),
    )
    if json_:
        render.print_json(result)
    else:
        for line in proof.lines(result):
            typer.echo(line)
    if not result["ok"]:
        raise typer.Exit(1)
