"""`krate image` (pull, import, list, show, rm, verify): OCI images on this machine.

`krate image pull` (the only one that touches the network) lives beside these, in
cli/image_pull.py. Only typer and the standard library at the top; the domain and the
store are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from krate.cli import views
from krate.cli.common import paths
from krate.cli.complete import image_names
from krate.cli.image_pull import pull
from krate.cli.options import JSON

app = typer.Typer(
    help=(
        "OCI images to run workloads on: pull, import, list, show, rm, verify. Images are "
        "identified by config digest; `krate run IMAGE -- CMD` never pulls.\n\n"
        "Example: krate image import ./alpine.tar && krate run alpine -- cat /etc/os-release"
    ),
    no_args_is_help=True,
)
app.command("pull")(pull)

NAME_HELP = "An image name (alpine, alpine:3.20, registry/repo:tag) or a config digest (prefix)."


PATH_ARG = typer.Argument(
    ..., help="A `docker save` tar, an OCI image layout (folder or tar), or a root folder."
)
NAMES_ARG = typer.Argument(
    ..., help=NAME_HELP + " A digest removes every name.", autocompletion=image_names
)
NAME_ARG = typer.Argument(..., help=NAME_HELP, autocompletion=image_names)
ONLY_ARG = typer.Argument(None, help="Only this image. " + NAME_HELP, autocompletion=image_names)


@app.command("import")
def import_(
    path: Path = PATH_ARG,
    ref: str = typer.Option(
        None,
        "--ref",
        help="The name to record (default: the archive's tags, or PATH's name). "
        "Example: krate image import ./rootfs --ref myroot:1",
    ),
    json_: bool = JSON,
) -> None:
    """Import an image from a file or folder (no network), store its blobs and unpack it.

    Example: docker save alpine:3.20 -o alpine.tar && krate image import alpine.tar
    """
    from krate import render
    from krate.images import importer
    from krate.store import open_store

    with open_store(paths()) as store:
        images = importer.import_path(store, paths(), path, ref)
    if json_:
        render.print_json([i.to_dict() for i in images])
        return
    for image in images:
        typer.echo(f"imported {image.ref}  {image.config_digest}")


@app.command("list")
def list_(json_: bool = JSON) -> None:
    """List images, oldest first: name, config digest (the image's identity), source, when.

    Example: krate image list --json | jq -r '.[].ref'
    """
    views.image_list(json_)


@app.command()
def show(name: str = NAME_ARG, json_: bool = JSON) -> None:
    """Show one image: digests, layers, the config a run honours, its unpacked root.

    Example: krate image show alpine --json | jq .config
    """
    import json

    from krate import render
    from krate.images import manage
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        info = manage.describe(store, paths(), name)
    if json_:
        render.print_json(info)
        return
    lines = [
        ("name", info["ref"]),
        ("config", info["config_digest"]),
        ("manifest", info["manifest_digest"] or ""),
        ("source", info["source"]),
        ("created", info["created"] or ""),
        ("added", info["added"]),
        ("rootfs", info["rootfs"] or "(not unpacked: the next run unpacks it)"),
    ]
    for key, value in lines:
        typer.echo(f"{key:<9} {value}")
    for key in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        if key in info["config"]:
            typer.echo(f"{key:<9} {json.dumps(info['config'][key])}")
    env = info["config"].get("Env") or []
    if env:
        typer.echo("env      " + " ".join(e.split("=", 1)[0] for e in env))
    typer.echo("layers")
    for digest in info["layer_digests"]:
        typer.echo(f"  {digest}")
    if info["other_refs"]:
        typer.echo("also named " + ", ".join(info["other_refs"]))
    if info["skipped"] or info["stripped"]:
        typer.echo(
            f"unpacking skipped {len(info['skipped'])} entries (devices, links out of the root) "
            f"and stripped setuid/setgid from {len(info['stripped'])}"
        )


@app.command()
def rm(
    names: list[str] = NAMES_ARG,
    json_: bool = JSON,
) -> None:
    """Forget images; delete their blobs unless another image or a build record needs them.

    Example: krate image rm alpine:3.20
    """
    from krate import render
    from krate.images import manage
    from krate.store import open_store

    with open_store(paths()) as store:
        result = manage.remove(store, paths(), names)
    if json_:
        render.print_json(result)
        return
    typer.echo(
        f"removed {', '.join(result['removed'])}; deleted {len(result['blobs_deleted'])} "
        f"blob(s), kept {len(result['blobs_kept'])} still referenced"
    )


@app.command()
def verify(
    name: str = ONLY_ARG,
    json_: bool = JSON,
) -> None:
    """Re-hash every image's blobs and check its unpacked root against its layers; exit 1
    naming each problem.

    Example: krate image verify && echo intact
    """
    from krate import render
    from krate.images import manage
    from krate.store import open_store

    with open_store(paths(), readonly=True) as store:
        results = manage.verify(store, paths(), name)
    bad = [r for r in results if r["problems"]]
    if json_:
        render.print_json({"ok": not bad, "images": results})
    elif not bad:
        typer.echo(f"{len(results)} image(s) verified, all intact")
    else:
        for r in bad:
            for problem in r["problems"]:
                render.message(f"krate: {r['ref']}: {problem}")
    if bad:
        raise typer.Exit(1)
