"""`krate info`: what this krate is and where it keeps things."""

from __future__ import annotations

import os

import typer

from krate.cli.common import paths


def info(
    json_: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show version, folders, database, sandbox and keyring backends, and telemetry (none).

    Example: krate info --json | jq .data_dir
    """
    from krate import info as domain
    from krate import render
    from krate.netguard.lockdown import describe as describe_lockdown

    facts = domain.gather(paths(), os.environ)
    if json_:
        render.print_json(facts)
        return
    sandbox = facts["sandbox"]
    rows = [
        ("version", facts["version"]),
        ("python", facts["python"]),
        ("platform", facts["platform"]),
        ("data folder", _absent(facts["data_dir"], facts["data_dir_exists"])),
        ("config folder", _absent(facts["config_dir"], facts["config_dir_exists"], "")),
        (
            "database",
            f"{facts['db_path']} ({facts['db_size']} bytes)"
            if facts["db_exists"]
            else _absent(facts["db_path"], False),
        ),
        ("schema version", facts["schema_version"] or "none yet"),
        ("events", facts["events"]),
        (
            "sandbox",
            f"{sandbox['backend']} ({'available' if sandbox['available'] else 'not available'})",
        ),
        ("keyring backend", facts["keyring_backend"]),
        ("telemetry", facts["telemetry"]),
        ("network lockdown", describe_lockdown(facts["lockdown"])),
        ("network guard", facts["network_guard"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def _absent(path: str, exists: bool, why: str = ": nothing recorded yet") -> str:
    """A path as `krate data where` shows it: marked absent until krate first writes there."""
    return path if exists else f"{path} (absent{why})"
