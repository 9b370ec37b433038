"""`krate artifacts` (list, show, export, verify) and `krate provenance`: the build outputs.

Only typer and the standard library at the top; the domain and the store are
imported inside each command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from krate.cli import views
from krate.cli.common import paths
from krate.cli.options import JSON, NEWEST
from krate.plural import counted

app = typer.Typer(
    help=(
        "Build outputs in the content-addressed store (artifacts/sha256/<hex>).\n\n"
        "Example: krate artifacts list"
    ),
    no_args_is_help=True,
)

REF_HELP = "A digest (sha256:<hex> or bare hex), a unique digest prefix, or a file name (newest)."


@app.command("list")
def list_(limit: int = NEWEST, json_: bool = JSON) -> None:
    """List stored outputs, newest last: digest, size, name, build, when.

    Example: krate artifacts list --json | jq -r '.[].digest'
    """
    views.artifacts_list(limit, json_)


@app.command()
def show(ref: str = typer.Argument(..., help=REF_HELP), json_: bool = JSON) -> None:
    """Show one stored output: size, name, build, when, where its bytes are.

    Example: krate artifacts show dist/app.tar.gz
    """
    from krate import render
    from krate.provenance import build as domain
    from krate.store import open_store
    from krate.store.pushes import pushes_for_digest

    with open_store(paths(), readonly=True) as store:
        info = domain.show_artifact(store, paths(), ref)
        info["pushes"] = [p.to_dict() for p in pushes_for_digest(store, info["digest"])]
    if json_:
        render.print_json(info)
        return
    lines = [
        ("digest", info["digest"]),
        ("size", counted(info["size"], "byte")),
        ("name", info["name"]),
        ("build", info["build_id"]),
        ("run", info["run_id"] or ""),
        ("stored", info["stored_at"]),
        ("path", info["path"] + ("" if info["present"] else " (missing!)")),
    ]
    others = [
        r for r in info["records"] if (r["build_id"], r["name"]) != (info["build_id"], info["name"])
    ]
    for key, value in lines:
        typer.echo(f"{key:<7} {value}")
    if others:
        typer.echo("same content also recorded as:")
        for r in others:
            typer.echo(f"  {r['name']}  build {r['build_id']}  {r['stored_at']}")
    if info["pushes"]:
        typer.echo("pushed to:")
        for p in info["pushes"]:
            typer.echo(f"  {p['reference']}  manifest {p['manifest_digest']}  {p['pushed_at']}")


@app.command()
def export(
    ref: str = typer.Argument(..., help=REF_HELP),
    out: str = typer.Option(..., "--out", "-o", help="Where to write the copy (must not exist)."),
) -> None:
    """Copy a stored output to a new file; never overwrites, and checks the digest on the way.

    Example: krate artifacts export sha256:3b1f... --out ./app.tar.gz
    """
    from krate import render
    from krate.provenance import build as domain
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        artifact = domain.export(store, paths(), ref, Path(out))
    render.message(f"exported {artifact.digest} ({counted(artifact.size, 'byte')}) to {out}")


@app.command()
def verify(
    ref: str = typer.Argument(None, help="Only this artifact (digest, prefix or name)."),
    json_: bool = JSON,
) -> None:
    """Re-hash the store against the records; exit 1 naming every missing or changed file.

    Without an argument also checks every build record against its tamper-evident event.

    Example: krate artifacts verify && echo intact
    """
    from krate import render
    from krate.provenance import build as domain
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        report = domain.verify(store, paths(), ref)
    if json_:
        render.print_json(report.to_dict())
    elif report.ok:
        typer.echo(f"{counted(report.checked, 'artifact')} verified, all intact")
    else:
        for p in report.problems:
            if "digest" in p:
                names = ", ".join(p["names"])
                render.message(f"krate: {p['digest']} ({names}): {p['problem']} [{p['path']}]")
            else:
                render.message(f"krate: build {p['build_id']}: {p['problem']}")
        render.message(
            f"krate: {len(report.problems)} problem(s) in {report.checked} artifact(s) checked"
        )
    if not report.ok:
        raise typer.Exit(1)


def provenance(
    ref: str = typer.Argument(..., help=REF_HELP),
    json_: bool = typer.Option(
        False, "--json", help="Print the Statement itself: the exact recorded bytes, one line."
    ),
    dsse: bool = typer.Option(
        False,
        "--dsse",
        help="Wrap the Statement in a DSSE envelope (unsigned: no signatures yet). "
        "Example: krate provenance dist/app.tar.gz --dsse",
    ),
) -> None:
    """Show the build record (in-toto Statement v1, SLSA Provenance v1) of an output.

    Example: krate provenance dist/app.tar.gz --json | jq .predicate.runDetails
    """
    from krate import render
    from krate.provenance import build as domain
    from krate.provenance import dsse as envelope
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        build, artifact = domain.provenance_of(store, ref)
    payload = build.statement.encode("utf-8")
    if dsse:
        render.print_json(envelope.envelope(payload))
        return
    if json_:
        sys.stdout.buffer.write(payload + b"\n")
        sys.stdout.flush()
        return
    _print_summary(build, artifact)


def _print_summary(build, artifact) -> None:
    import json

    from krate.provenance import build as domain

    s = domain.summary(json.loads(build.statement))
    ext, meta = s["external"], s["metadata"]
    out = [
        f"artifact  {artifact.name}  {artifact.digest}",
        f"build     {build.id}" + (f" ({build.name})" if build.name else ""),
        f"run       {meta.get('invocationId', '')}",
        f"builder   {s['builder'].get('id', '')}",
        f"command   {' '.join(ext.get('argv', []))}",
        f"in        {ext.get('workingDirectory', '')}",
        f"started   {meta.get('startedOn', '')}",
        f"finished  {meta.get('finishedOn', '')}",
    ]
    policy = ext.get("policy")
    if policy:
        out.append(f"policy    {policy.get('name')} sha256:{policy.get('sha256', '?')}")
    internal = s["internal"]
    if internal:
        out.append("sandbox   " + ", ".join(f"{k}={v}" for k, v in internal.items()))
    out.append("subjects")
    for name, digest in s["subjects"]:
        out.append(f"  sha256:{digest.get('sha256', '')}  {name}")
    if s["dependencies"]:
        out.append("dependencies")
        for dep in s["dependencies"]:
            digest = ", ".join(f"{k}:{v}" for k, v in dep.get("digest", {}).items())
            extra = dep.get("annotations") or {}
            note = " (uncommitted changes)" if extra.get("dirty") else ""
            out.append(f"  {digest}  {dep.get('name', dep.get('uri', ''))}{note}")
    for name, notes in s["byproducts"]:
        out.append(f"{name:<9} {json.dumps(notes, sort_keys=True)}")
    out.append(f"record    sha256:{build.statement_sha256} (`--json` prints it, `--dsse` wraps it)")
    typer.echo("\n".join(out))
