"""`krate policy`: list, show, check, explain, init, trust, untrust.

Commands parse, call one function of krate.policy, and render. The policy
package is imported inside each command (start-up time).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from krate.cli.common import paths
from krate.cli.options import JSON
from krate.cli.policy_options import load_effective, policy_options, read_trust

app = typer.Typer(
    help="The policy a workload runs under: what it may read, write, reach and inherit.\n\n"
    "Example: krate policy explain net registry.npmjs.org",
    no_args_is_help=True,
)

FileArg = Annotated[
    Path | None,
    typer.Argument(help="The policy file (default: the krate.toml here, when only one applies)."),
]


@app.command("list")
def list_(json_: bool = JSON) -> None:
    """List the built-in profiles, your user policy and each project file with its trust state.

    Example: krate policy list --json
    """
    from krate import render
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


@app.command()
@policy_options
def show(json_: bool = JSON, *, flags) -> None:
    """Show the effective policy here, each rule with its layer, and any ignored widenings.

    Takes the same policy options as `krate run`, to preview a run.

    Example: krate policy show --policy strict --allow-host api.example.com
    """
    from krate import render

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


@app.command()
def check(file: Annotated[Path, typer.Argument(help="The policy file to check.")]) -> None:
    """Check a policy file: exit 0 when valid, else 1 with `FILE:LINE: message` lines.

    Example: krate policy check krate.toml
    """
    from krate.policy.load import check_file

    problems = check_file(file)
    if problems:
        for line in problems:
            sys.stderr.write(line + "\n")
        raise typer.Exit(1)
    typer.echo(f"{file}: ok")


@app.command()
@policy_options
def explain(
    kind: str = typer.Argument(..., metavar="KIND", help="net, read, write or env."),
    subject: str = typer.Argument(
        ...,
        metavar="SUBJECT",
        help="HOST[:PORT] (port 443 if omitted) or a URL, a PATH, or a variable NAME.",
    ),
    json_: bool = JSON,
    no_resolve: bool = typer.Option(
        False,
        "--no-resolve",
        help="net: answer from the rules alone, without resolving the name (a run also "
        "refuses an allowed name that resolves to a private address). Example: --no-resolve",
    ),
    *,
    flags,
) -> None:
    """Say whether the policy here allows one thing, which rule decides and from which layer.

    For net, an allowed name is resolved as a run would (unless --no-resolve): one that
    resolves to a private or loopback address is denied unless `private_ok` names it.
    A denial ends with the flag that would allow it. Exit 0 whatever the verdict.

    Example: krate policy explain net github.com:22 --json
    """
    from krate import render
    from krate.policy.manage import explain as decide

    effective = load_effective(flags, Path.cwd())
    decision = decide(effective, kind, subject, cwd=Path.cwd())
    out = decision.to_dict()
    if kind == "net":
        out.update(_as_run_would(effective, subject, decision, no_resolve))
    if json_:
        render.print_json(out)
        return
    line = f"{out['verdict']}\t{out['subject']}\t{out['rule']}\t[{out['layer']}]"
    typer.echo(line + (f"\t{out['reason']}" if out.get("reason") else ""))


def _as_run_would(effective, subject: str, decision, no_resolve: bool) -> dict:
    """What a run's connection meets beyond the rule: the resolved addresses and their check
    (through the egress proxy, krate/resolve_early.py), and the flag that would allow it."""
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
    return {k: answer[k] for k in keep if k in answer}


@app.command()
def init() -> None:
    """Write a commented krate.toml template in this folder (never overwrites).

    Example: krate policy init && $EDITOR krate.toml
    """
    from krate import render
    from krate.policy.manage import init_template

    target = init_template(Path.cwd())
    render.message(f"wrote {target}; check it with `krate policy check {target.name}`")


@app.command()
def trust(
    file: FileArg = None,
) -> None:
    """Trust a project policy file as it is now, so it may widen the policy; an edit revokes it.

    Records the file's SHA-256 (event `policy.trusted`).

    Example: krate policy trust
    """
    from krate import render
    from krate.errors import KrateError
    from krate.policy import Flags, find_project_files
    from krate.policy.manage import project_or_file, trust_file, validate_for_trust
    from krate.store import open_store

    cwd = Path.cwd()
    path = project_or_file(file, cwd)
    digest = validate_for_trust(path)
    accepted: tuple[str, ...] = ()
    if path in find_project_files(cwd):
        try:
            notes = load_effective(Flags(), cwd).ignored
            accepted = tuple(n for n in notes if n.startswith(f"{path}:"))
        except KrateError:
            accepted = ()
    with open_store(paths()) as store:
        trust_file(store, path, digest)
    render.message(f"trusted {path} (sha256 {digest}); any edit revokes this trust")
    for note in accepted:
        render.message(f"now in effect: {note.split(' ignored')[0]}")


@app.command()
def untrust(
    file: FileArg = None,
) -> None:
    """Stop trusting a project policy file: it may only narrow again (event `policy.untrusted`).

    Example: krate policy untrust
    """
    from krate import render
    from krate.policy.manage import project_or_file, untrust_file
    from krate.store import open_store

    path = project_or_file(file, Path.cwd())
    with open_store(paths()) as store:
        untrust_file(store, path)
    render.message(f"no longer trusted: {path}")
