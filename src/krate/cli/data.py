"""`krate data`: your rights over your data: where, export, delete, restore, prune.

Destructive commands ask first (or take --yes) and refuse without a terminal to ask on.
KRATE_TEST_CRASH_AT=<point> is a test-only hook: the process kills itself (SIGKILL) when
the operation reaches that named point, so tests can prove an interrupted delete or
prune leaves the old or the new state. Points are listed in docs/privacy.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from krate.cli import views
from krate.cli.common import paths
from krate.cli.options import JSON
from krate.plural import counted

app = typer.Typer(
    help=(
        "Your data, your rights: see where krate keeps things, export, delete, restore, prune.\n\n"
        "Example: krate data where"
    ),
    no_args_is_help=True,
)

YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation. Example: --yes")


def _hook():
    """The test-only crash hook (see the module docstring); None outside tests."""
    point = os.environ.get("KRATE_TEST_CRASH_AT")
    if not point:
        return None

    def hook(name: str) -> None:
        if name == point:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _hooked(**kwargs):
    hook = _hook()
    if hook is not None:
        kwargs["hook"] = hook
    return kwargs


def _keychain_remover(failed: list):
    """Removes krate's keychain entries through the backend this environment names.

    An entry that cannot be removed is reported, not fatal: the purge of the files
    goes on, and the user is told which entries to remove by hand.
    """

    def remove(entries):
        from krate.errors import KrateError
        from krate.registry.keychain import backend_name, delete_entry

        name, removed = backend_name(os.environ), []
        for entry in entries:
            try:
                if delete_entry(name, entry.account):
                    removed.append(entry)
            except KrateError as exc:
                failed.append((entry, str(exc)))
        return removed

    return remove


def _confirm(question: str, yes: bool, what: str) -> None:
    from krate.errors import KrateError

    if yes:
        return
    if not sys.stdin.isatty():
        raise KrateError(
            f"{what} needs confirmation and there is no terminal to ask on; pass --yes"
        )
    if not typer.confirm(question, default=False, err=True):
        raise KrateError(f"nothing changed ({what} not confirmed)")


_size = views.size  # also the export and delete messages'


@app.command()
def where(json_: bool = JSON) -> None:
    """List every place krate keeps anything, with sizes and counts per kind of record.

    Example: krate data where --json | jq '.places[] | {place, path, bytes}'
    """
    views.data_where(json_)


@app.command()
def export(
    out: str = typer.Option(..., "--out", "-o", help="The zip file to write (must not exist)."),
    with_artifacts: bool = typer.Option(
        False,
        "--with-artifacts",
        help="Include the stored artifacts themselves. Example: --with-artifacts",
    ),
    json_: bool = JSON,
) -> None:
    """Export everything krate holds into one zip (events with hashes, tables, policy, README).

    Refuses to overwrite. Records `data.exported` (where, size, SHA-256; never the contents).

    Example: krate data export --out ~/my-krate.zip
    """
    from krate import __version__, render
    from krate.privacy.export import check_target
    from krate.privacy.export import export as run_export
    from krate.store import open_store
    from krate.store.connection import utc_now

    where_to = paths()
    # Checked before open_store, which would create the data folder.
    target = check_target(Path(out), where_to)
    with open_store(where_to) as store:
        result = run_export(
            store,
            where_to,
            target,
            with_artifacts=with_artifacts,
            now=utc_now(),
            version=__version__,
        )
    if json_:
        render.print_json(result.to_dict())
        return
    extra = f" and {counted(result.artifacts, 'artifact')}" if result.artifacts else ""
    render.message(
        f"exported {counted(result.events, 'event')}, {counted(len(result.tables), 'table')}"
        f"{extra} to {result.path} "
        f"({_size(result.bytes)}, sha256 {result.sha256})"
    )


@app.command()
def delete(
    yes: bool = YES,
    now: bool = typer.Option(
        False,
        "--now",
        help="Purge permanently now instead of keeping it 7 days (no restore). "
        "Example: krate data delete --now --yes",
    ),
    json_: bool = JSON,
) -> None:
    """Delete all of krate's data; restorable for 7 days with `krate data restore`, then purged.

    krate then behaves as freshly installed. With --now the data, every pending deletion
    and krate's keychain entries are purged at once.

    Example: krate data delete
    """
    from krate import render
    from krate.privacy import GRACE
    from krate.privacy import deletion as domain
    from krate.store.connection import utc_now

    where_to = paths()
    plan = domain.plan_delete(where_to)
    if plan.empty and not (now and plan.pending):
        render.message(f"nothing to delete: {where_to.data_dir} holds no krate data")
        if json_:
            render.print_json(None)
        return
    lines = []
    if not plan.empty:
        folders = str(plan.data_dir) + (f" and {plan.config_dir}" if plan.config_dir else "")
        lines.append(
            f"krate's data: {folders} ({_size(plan.bytes)} in {counted(plan.files, 'file')})"
        )
    if now:
        lines += [f"pending deletion of {p.stamp}: {p.path}" for p in plan.pending]
    lines += [f"keychain entry: service {e.service}, account {e.account}" for e in plan.keychain]
    for line in lines:
        render.message(line)
    if now:
        question = "Permanently delete all of the above now? This cannot be undone."
    else:
        question = (
            f"Delete it? You can restore it with `krate data restore` for {GRACE.days} days; "
            "then it is purged."
        )
    _confirm(question, yes, "deleting your data")
    failed: list = []
    result = domain.delete(
        where_to, utc_now(), purge_now=now, remover=_keychain_remover(failed), **_hooked()
    )
    for entry, reason in failed:
        render.message(
            f"krate: could not remove keychain entry {entry.service}/{entry.account}: {reason}; "
            "remove it with your keychain tool"
        )
    if json_:
        render.print_json(result.to_dict())
    elif now:
        render.message(
            "deleted permanently; krate is now as freshly installed"
            + (
                f" (keychain entries removed: {len(result.keychain_removed)})"
                if plan.keychain
                else ""
            )
        )
    else:
        render.message(
            f"deleted: moved to {result.moved_to}; restore with `krate data restore` until "
            f"{result.purge_after:%Y-%m-%d %H:%M} UTC; krate is now as freshly installed"
        )


@app.command()
def restore(
    stamp: str = typer.Option(
        None,
        "--from",
        help="Which pending deletion (its timestamp, see `krate data where`). "
        "Example: --from 20260430T120000.000000Z",
    ),
    json_: bool = JSON,
) -> None:
    """Bring back data deleted with `krate data delete` within 7 days, exactly as it was.

    Example: krate data restore && krate audit verify
    """
    from krate import render
    from krate.privacy import deletion as domain
    from krate.store.connection import utc_now

    failed: list = []  # restore purges an expired deletion before refusing
    result = domain.restore(
        paths(), utc_now(), stamp=stamp, remover=_keychain_remover(failed), **_hooked()
    )
    if json_:
        render.print_json(result.to_dict())
    else:
        render.message(
            f"restored the data deleted {result.deleted_at:%Y-%m-%d %H:%M} UTC "
            f"into {result.data_dir}"
        )


@app.command()
def prune(
    before: str = typer.Option(
        None,
        "--before",
        help="Drop what was recorded before this date/time. Example: --before 2026-01-01",
    ),
    older_than: str = typer.Option(
        None, "--older-than", help="Drop what is older than this duration (e.g. 90d, 12w)."
    ),
    yes: bool = YES,
    json_: bool = JSON,
) -> None:
    """Drop old runs, decisions, builds and events; the chain still verifies from a checkpoint.

    Whole runs only. Unreferenced artifacts are removed and the database is rebuilt so no
    readable copy of what was pruned remains in it. The package caches of projects whose
    folder is gone, or that no run used since the cutoff, are removed too.

    Example: krate data prune --older-than 90d --yes
    """
    from krate import render
    from krate.errors import UsageError
    from krate.privacy import prune as domain
    from krate.store import open_store
    from krate.store.connection import utc_now
    from krate.timeparse import parse_duration, parse_moment

    if (before is None) == (older_than is None):
        raise UsageError("give exactly one of --before DATE or --older-than DURATION")
    now = utc_now()
    if older_than is not None:
        try:
            cutoff = now - parse_duration(older_than)
        except ValueError:
            raise UsageError(
                f"invalid --older-than value {older_than!r}: use a duration such as 90d, 12w, 24h"
            ) from None
    else:
        cutoff = parse_moment(before, now, option="--before")
    where_to = paths()
    with open_store(where_to) as store:
        planned = domain.plan(store, cutoff)
        if planned.events:
            render.message(
                f"prune {counted(planned.events, 'event')} ({planned.oldest[:19]} .. "
                f"{planned.newest[:19]} UTC) and the rows of {counted(planned.runs, 'run')} "
                f"recorded before {planned.cutoff[:19]}"
            )
            _confirm("Prune them permanently?", yes, "pruning")
        result = domain.prune(
            store, cutoff, where_to.artifacts_dir, now, data_dir=where_to.data_dir, **_hooked()
        )
    if json_:
        render.print_json(result.to_dict())
        return
    if result.events:
        rows = ", ".join(f"{t} {n}" for t, n in result.tables.items())
        render.message(
            f"pruned {counted(result.events, 'event')}"
            + (f" and rows: {rows}" if rows else "")
            + f"; checkpoint event {result.checkpoint_seq}"
        )
    else:
        render.message(f"nothing recorded before {result.cutoff[:19]} UTC")
    if result.artifacts_removed:
        render.message(f"removed {len(result.artifacts_removed)} unreferenced artifacts")
    if result.caches_removed:
        count = len(result.caches_removed)
        render.message(
            f"removed the package caches of {count} project{'s' if count != 1 else ''} "
            "gone or unused since the cutoff"
        )
    if not result.wal_emptied:
        render.message(
            "note: another krate process was reading; the write-ahead log is emptied when it ends"
        )
