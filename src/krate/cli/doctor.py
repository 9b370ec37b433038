"""`krate doctor`: check the sandbox, the database, the record, file permissions, pending
deletions and the keychain; print each problem with its fix; exit 1 when any check fails."""

from __future__ import annotations

import os

import typer

from krate.cli.common import paths


def doctor(
    json_: bool = typer.Option(False, "--json", help="Print JSON. Example: krate doctor --json"),
    keyring_write_test: bool = typer.Option(
        False,
        "--keyring-write-test",
        help="Also store, read back and remove a throwaway keychain entry (service `krate`). "
        "Example: krate doctor --keyring-write-test",
    ),
) -> None:
    """Check that this install works: sandbox, database, event chain, permissions, keychain.

    Only looks (it runs one harmless command in a sandbox and reads the store); exit 1
    when a check fails, with the fix for each problem. Warnings do not fail.

    Example: krate doctor || krate doctor --json | jq '.checks[] | select(.status != "ok")'
    """
    from datetime import UTC, datetime

    from krate import render
    from krate.doctor import FAIL, WARN, diagnose
    from krate.doctor_trial import take_early
    from krate.registry.keychain import backend_name

    report = diagnose(
        paths(),
        path_env=os.environ.get("PATH"),
        keyring_backend=backend_name(os.environ),
        now=datetime.now(UTC),
        keyring_write_test=keyring_write_test,
        trial=take_early(),  # started before the lockdown (cli/main.py)
    )
    if json_:
        render.print_json(report.to_dict())
    else:
        marks = {FAIL: "FAIL", WARN: "warn"}
        for check in report.checks:
            typer.echo(f"{marks.get(check.status, 'ok'):4}  {check.name}: {check.detail}")
            if check.fix and check.status != "ok":
                typer.echo(f"      fix: {check.fix}")
    if not report.ok:
        failed = [c.name for c in report.checks if c.status == FAIL]
        render.message(f"krate: doctor found problems: {', '.join(failed)}")
        raise typer.Exit(1)
