"""`krate runs`: what ran, under which policy, how it ended, and what the policy decided."""

from __future__ import annotations

import typer

from krate.cli.common import paths, print_rows
from krate.cli.complete import run_refs
from krate.cli.options import JSON

app = typer.Typer(
    help="Past `krate run`s: list them, show one with its decisions.\n\n"
    "Example: krate runs show last",
    no_args_is_help=True,
)


def _argv_text(argv: list[str], width: int = 60) -> str:
    import shlex

    text = shlex.join(argv)
    return text if len(text) <= width else text[: width - 1] + "…"


def _subject(decision: dict) -> str:
    """The decision's subject; a count of coalesced denials says how many more there were."""
    subject = decision.get("subject") or ""
    repeats = decision.get("repeats")
    return f"{subject} ({repeats} more, counted)" if repeats else subject


@app.command("list")
def list_(
    limit: int = typer.Option(20, "--limit", min=1, help="Show the newest N runs."),
    json_: bool = JSON,
) -> None:
    """List runs, newest first. A run whose krate was killed shows as `interrupted`.

    Example: krate runs list --limit 5 --json | jq '.[].exit_code'
    """
    from krate import render
    from krate.runs import list_runs

    print_rows(
        list_runs(paths(), limit),
        json_,
        lambda r: r.to_dict(),
        ["id", "started (UTC)", "status", "exit", "seconds", "denied", "command"],
        lambda r: (
            r.id,
            render.when(r.started),
            r.status,
            "" if r.exit_code is None else r.exit_code,
            "" if r.duration_s is None else f"{r.duration_s:.2f}",
            r.denied,
            _argv_text(r.argv),
        ),
    )


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
    from krate import render
    from krate.runs import show_run

    row, decisions, run_events = show_run(paths(), run)
    started = next((e.data for e in run_events if e.kind == "run.started"), {})
    finished = next((e.data for e in run_events if e.kind == "run.finished"), {})
    if json_:
        render.print_json(_as_json(row, decisions, run_events, started, finished))
        return
    _print_facts(row, started, finished)
    _print_decisions(decisions)


def _as_json(row, decisions: list[dict], run_events: list, started: dict, finished: dict) -> dict:
    """The run's row with its decisions, hosts, and what its start and finish recorded."""
    from krate.egress import summarize_hosts

    out = row.to_dict()
    out["decision_counts"] = out.pop("decisions")
    out["decisions"] = decisions
    out["hosts"] = summarize_hosts(decisions)
    out["limits"] = started.get("limits", {})
    out["layout"] = started.get("layout", {})
    out["ignored"] = started.get("ignored", [])
    out["run_as"] = started.get("run_as")
    out["as_root"] = bool(started.get("as_root"))
    out["image"] = started.get("image")
    out["policy_files_changed"] = finished.get("policy_files_changed", [])
    out["events"] = [e.seq for e in run_events]
    return out


def _image(started: dict) -> list[tuple[str, str]]:
    image = started.get("image")
    if not image:
        return []
    return [("image", f"{image.get('ref')} {image.get('config')}")]


def _print_facts(row, started: dict, finished: dict) -> None:
    """One `key  value` line per fact of the run."""
    import shlex

    lines = [
        ("id", row.id),
        ("command", shlex.join(row.argv)),
        ("directory", row.cwd),
        ("workspace", row.workspace),
        ("backend", row.backend),
        *_image(started),
        *_identity(started),
        ("policy", f"{row.policy_name} {row.policy_hash or ''}".strip()),
        ("started", row.started),
        ("finished", row.finished or ""),
        ("duration", "" if row.duration_s is None else f"{row.duration_s:.3f} s"),
        ("status", row.status + (f" ({row.reason})" if row.reason else "")),
        ("exit", "" if row.exit_code is None else str(row.exit_code)),
        ("decisions", f"{row.allowed} allowed, {row.denied} denied"),
    ]
    layout = started.get("layout", {})
    if layout.get("hidden"):
        lines.append(("hidden", ", ".join(layout["hidden"])))
    if layout.get("network"):
        lines.append(("network", layout["network"]))
    written = finished.get("policy_files_changed", [])
    if written:
        lines.append(("krate.toml written", ", ".join(written)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        typer.echo(f"{key:<{width}}  {value}")


def _print_decisions(decisions: list[dict]) -> None:
    """The hosts the run reached or was refused, then every decision."""
    from krate import render
    from krate.egress import summarize_hosts

    hosts = summarize_hosts(decisions)
    if hosts:
        typer.echo("")
        render.table(
            ["host", "port", "verdict", "connections", "bytes up", "bytes down"],
            ([h["host"], h["port"], h["verdict"], h["connections"], h["bytes_up"], h["bytes_down"]]
             for h in hosts),
        )  # fmt: skip
    if decisions:
        typer.echo("")
        render.table(
            ["seq", "area", "verdict", "subject", "rule", "layer", "reason"],
            (
                (
                    d["seq"],
                    d.get("area", ""),
                    d.get("verdict", ""),
                    _subject(d),
                    d.get("rule", ""),
                    d.get("layer", ""),
                    d.get("reason") or "",
                )
                for d in decisions
            ),  # fmt: skip
        )


def _identity(started: dict) -> list[tuple[str, str]]:
    """Whom a root krate ran the workload as (nothing for an ordinary user's run)."""
    who = started.get("run_as")
    if who:
        return [("runs as", f"{who['user']} (uid {who['uid']}), the workspace's owner")]
    if started.get("as_root"):
        return [("runs as", "root (uid 0), --as-root")]
    return []
