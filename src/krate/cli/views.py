"""The bodies of the light read-only commands, without Typer.

`cli/fastread.py` calls these without importing Typer (Typer alone is ~5x the start of
`python -c pass`); the Typer commands (info.py, audit.py, runs.py, builds.py,
artifacts.py, policy.py, data.py, image.py) call the same functions, so both routes
print the same bytes (tests/test_fastread.py compares them).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from krate.cli.common import paths, print_rows, print_stored


def echo(text: object = "") -> None:
    """One line on stdout, as `typer.echo` writes it."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def info(json_: bool) -> None:
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
        ("data folder", absent(facts["data_dir"], facts["data_dir_exists"])),
        ("config folder", absent(facts["config_dir"], facts["config_dir_exists"], "")),
        (
            "database",
            f"{facts['db_path']} ({facts['db_size']} bytes)"
            if facts["db_exists"]
            else absent(facts["db_path"], False),
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
        echo(f"{key:<{width}}  {value}")


def absent(path: str, exists: bool, why: str = ": nothing recorded yet") -> str:
    """A path as `krate data where` shows it: marked absent until krate first writes there."""
    return path if exists else f"{path} (absent{why})"


def audit_head(json_: bool) -> None:
    from krate import render
    from krate.store import events, open_store

    with open_store(paths(), readonly=True) as store:
        current = events.head(store)
    if json_:
        render.print_json({"seq": current.seq, "hash": current.hash})
    else:
        echo(f"{current.seq} {current.hash}")


def audit_list(
    since: str | None,
    until: str | None,
    kind: str | None,
    run: str | None,
    limit: int | None,
    json_: bool,
    jsonl: bool,
) -> None:
    from krate import render
    from krate.cli.common import output_mode
    from krate.store import events, open_store
    from krate.store.connection import utc_now
    from krate.timeparse import parse_moment

    mode = output_mode(json_, jsonl)
    now = utc_now()
    bounds = {
        name: events.format_ts(parse_moment(value, now, option=f"--{name}")) if value else None
        for name, value in (("since", since), ("until", until))
    }
    with open_store(paths(), readonly=True) as store:
        rows = events.query(
            store,
            since=bounds["since"],
            until=bounds["until"],
            kind_prefix=kind,
            run_id=run,
            limit=limit,
        )
    if mode == "json":
        render.print_json([e.to_dict() for e in rows])
    elif mode == "jsonl":
        render.print_jsonl(e.to_dict() for e in rows)
    else:
        render.table(
            ["seq", "time (UTC)", "kind", "run", "data"],
            ((e.seq, render.when(e.ts), e.kind, e.run_id or "", brief(e.data)) for e in rows),
        )


def brief(data: dict, width: int = 80) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def runs_list(limit: int, json_: bool) -> None:
    from krate import render
    from krate.runs_read import list_runs

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


def runs_show(run: str, json_: bool) -> None:
    from krate import render
    from krate.runs_read import show_run

    row, decisions, run_events = show_run(paths(), run)
    started = next((e.data for e in run_events if e.kind == "run.started"), {})
    finished = next((e.data for e in run_events if e.kind == "run.finished"), {})
    if json_:
        render.print_json(_as_json(row, decisions, run_events, started, finished))
        return
    _print_facts(row, started, finished)
    _print_decisions(decisions)


def _argv_text(argv: list[str], width: int = 60) -> str:
    import shlex

    text = shlex.join(argv)
    return text if len(text) <= width else text[: width - 1] + "…"


def _subject(decision: dict) -> str:
    """The decision's subject; a count of coalesced denials says how many more there were."""
    subject = decision.get("subject") or ""
    repeats = decision.get("repeats")
    return f"{subject} ({repeats} more, counted)" if repeats else subject


def _as_json(row, decisions: list[dict], run_events: list, started: dict, finished: dict) -> dict:
    """The run's row with its decisions, hosts, and what its start and finish recorded."""
    from krate.runs_read import summarize_hosts

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
        echo(f"{key:<{width}}  {value}")


def _print_decisions(decisions: list[dict]) -> None:
    """The hosts the run reached or was refused, then every decision."""
    from krate import render
    from krate.runs_read import summarize_hosts

    hosts = summarize_hosts(decisions)
    if hosts:
        echo("")
        render.table(
            ["host", "port", "verdict", "connections", "bytes up", "bytes down"],
            ([h["host"], h["port"], h["verdict"], h["connections"], h["bytes_up"], h["bytes_down"]]
             for h in hosts),
        )  # fmt: skip
    if decisions:
        echo("")
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


def data_where(json_: bool) -> None:
    from krate import render
    from krate.privacy.where import where as inventory

    found = inventory(paths())
    if json_:
        render.print_json(found)
        return
    render.table(
        ["place", "path", "size", "records", "note"],
        (
            (
                p["place"],
                p["path"] or "",
                size(p["bytes"]) if p["exists"] else "absent",
                records(p["records"]),
                p["note"],
            )
            for p in found["places"]
        ),
    )


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def records(records: dict) -> str:
    parts = []
    for key, value in records.items():
        if key == "events_by_kind":
            if value:
                parts.append("(" + ", ".join(f"{k} {n}" for k, n in value.items()) + ")")
        elif key == "tables":
            if value:
                parts.append("tables: " + ", ".join(f"{k} {n}" for k, n in value.items()))
        elif key == "accounts":
            parts += [f"{a['service']}/{a['account']}" for a in value]
        elif key == "files" and isinstance(value, dict):
            continue
        else:
            parts.append(f"{value} {key[:-1] if value == 1 and key.endswith('s') else key}")
    return " ".join(parts)


def image_list(json_: bool) -> None:
    from krate import render
    from krate.store import images, open_store  # images/catalog.py loads the blob store

    with open_store(paths(), readonly=True) as store:
        found = images.all_rows(store)  # = catalog.list_images
    if json_:
        render.print_json([r._asdict() for r in found])
        return
    render.table(
        ["name", "config", "layers", "source", "added (UTC)"],
        ((r.ref, short_digest(r.config_digest), len(r.layers), r.source, render.when(r.added))
         for r in found),
    )  # fmt: skip


def short_digest(digest: str | None) -> str:
    return digest[: len("sha256:") + 12] if digest else ""


def policy_show_options(json_: bool, **options: Any) -> None:
    """`policy show` as cli/fastread.py parsed it: the policy options by name."""
    from krate.cli.policy_load import flags_from

    policy_show(json_, flags_from(**options))


def policy_show(json_: bool, flags: Any) -> None:
    from pathlib import Path

    from krate import render
    from krate.cli.policy_load import load_effective

    effective = load_effective(flags, Path.cwd())
    if json_:
        render.print_json(effective.to_dict())
        return
    out = sys.stdout.write
    data = effective.to_dict()
    out(f"policy {effective.name}  sha256:{effective.hash}\n")
    out(f"workspace {effective.workspace}\n")
    for layer in data["layers"]:
        if layer["source"]:
            state = "trusted" if layer["trusted"] else "NOT trusted: may only narrow"
            out(f"layer {layer['layer']}: {layer['source']} ({state})\n")
    rows = []
    for section in ("deny_read", "read_only", "allow_write"):
        rows += [(section, r["path"], r["rule"], r["layer"]) for r in data["filesystem"][section]]
    allow = data["network"]["allow"]
    rows += [("network", r["pattern"], r["rule"], r["layer"]) for r in allow]
    private = data["network"].get("private_ok", [])
    rows += [("private_ok", r["pattern"], r["rule"], r["layer"]) for r in private]
    otherwise = data["network"]["otherwise"]
    rows.append(
        (
            "network",
            "(anything else)" if allow else "(no network)",
            "deny: " + otherwise["rule"],
            otherwise["layer"],
        )
    )
    for layer in data["env"]:
        rows += [("env pass", name, "", layer["layer"]) for name in layer["pass"]]
        rows += [("env strip", name, "", layer["layer"]) for name in layer["strip"]]
    for name, limit in data["limits"].items():
        if limit["value"] is not None:
            rows.append(("limits", f"{name} = {limit['value']}", "", limit["layer"]))
    sys.stdout.flush()
    render.table(["section", "value", "rule", "layer"], rows)
    for note in effective.ignored:
        out(f"ignored: {note}\n")


def builds_list(limit: int | None, json_: bool) -> None:
    from krate import render
    from krate.store import artifacts as rows

    print_stored(
        rows.list_builds,
        limit,
        json_,
        rows.BuildRow.summary,
        ["id", "time (UTC)", "name", "run", "outputs"],
        lambda b: (b.id, render.when(b.created), b.name or "", b.run_id or "", b.subjects),
    )


def artifacts_list(limit: int | None, json_: bool) -> None:
    from krate import render
    from krate.store import artifacts as rows

    print_stored(
        rows.list_artifacts,
        limit,
        json_,
        rows.ArtifactRow.to_dict,
        ["digest", "size", "name", "build", "stored (UTC)"],
        lambda a: (
            short_digest(a.digest),
            a.size,
            a.name,
            a.build_id,
            render.when(a.stored_at),
        ),
    )


def policy_list(json_: bool) -> None:
    from pathlib import Path

    from krate import render
    from krate.cli.policy_load import read_trust
    from krate.policy.manage import list_policies

    config = paths()
    trusted, _ = read_trust(config)
    rows = list_policies(workspace=Path.cwd(), user_policy_path=config.user_policy, trusted=trusted)
    if json_:
        render.print_json(rows)
        return
    render.table(
        ["name", "kind", "state", "path", "description"],
        ((r["name"], r["kind"], r["state"], r["path"] or "", r["description"]) for r in rows),
    )


def audit_network(json_: bool) -> None:
    """`krate audit network` without --prove (the proof goes through Typer, cli/main.py)."""
    from krate import render
    from krate.netguard import lockdown, report
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        summary = report.summarize(store, lockdown.state())
    if json_:
        render.print_json(summary)
        return
    for line in report.lines(summary):
        echo(line)


def policy_explain_options(
    kind: str, subject: str, json_: bool, no_resolve: bool, **options: Any
) -> None:
    """`policy explain` as cli/fastread.py parsed it: the policy options by name."""
    from krate.cli.policy_load import flags_from

    policy_explain(kind, subject, json_, no_resolve, flags_from(**options))


def policy_explain(kind: str, subject: str, json_: bool, no_resolve: bool, flags: Any) -> None:
    from pathlib import Path

    from krate import render
    from krate.cli.policy_load import load_effective
    from krate.policy.manage import explain as decide

    effective = load_effective(flags, Path.cwd())
    decision = decide(effective, kind, subject, cwd=Path.cwd())
    out = decision.to_dict()
    if kind == "net":
        out.update(_as_run_would(effective, subject, decision, no_resolve))
    _resolved()
    if json_:
        render.print_json(out)
        return
    line = f"{out['verdict']}\t{out['subject']}\t{out['rule']}\t[{out['layer']}]"
    echo(line + (f"\t{out['reason']}" if out.get("reason") else ""))


def _resolved() -> None:
    """explain's forked resolver (krate/resolve_early.py) is done with: end it if it was
    never asked (a denied host), then lock down, as cli/main.py held the lockdown for it."""
    from krate.netguard import lockdown

    if lockdown.imports_held():
        from krate import resolve_early

        resolve_early.abandon()
        lockdown.apply()


def _as_run_would(effective, subject: str, decision, no_resolve: bool) -> dict:
    """What a run's connection meets beyond the rule: the resolved addresses and their check
    (the egress proxy's own code, unlocked: krate/resolve_early.py), and the flag that
    would allow it."""
    from krate.egress import compile_private, compile_rules, helperlib
    from krate.policy.hosts import allow_hint
    from krate.policy.manage import net_subject

    host, port = net_subject(subject)
    if not decision.allowed and decision.layer == "input":
        return {}  # not a host name or port at all: no flag would allow it
    if not decision.allowed:
        hint = allow_hint(host, port)
        return {"reason": f"not allowed by the policy; to allow it: {hint}", "hint": hint}
    if no_resolve:
        return {}
    from krate import resolve_early

    config = {
        "rules": compile_rules(effective),
        "net_default": list(effective.net_default),
        "private_ok": compile_private(effective),
        "given": helperlib.given(),
        "listen": "none",
    }
    answer = resolve_early.explain(config, host, port)
    keep = ("verdict", "rule", "layer", "reason", "hint", "addresses")
    out = {k: answer[k] for k in keep if k in answer}
    from krate.denials import policy_fix

    fix = policy_fix(str(out.get("hint") or ""), host, port) if out.get("verdict") == "deny" else ""
    if fix:  # the policy-side fix, next to the flag
        out["command"] = fix
        out["reason"] = f"{out.get('reason', '')} (for every run: {fix})"
    return out


def image_pull(**options: Any) -> None:
    """`krate image pull`: not read-only, but its start-up is part of every pull's time."""
    from krate.cli.image_pull_run import pull

    pull(**options)
