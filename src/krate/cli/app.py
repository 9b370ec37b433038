"""The root `krate` app: mounts one Typer app per command group."""

from __future__ import annotations

import typer

from krate import __version__
from krate.cli import audit, info

app = typer.Typer(
    name="krate",
    help=(
        "Run untrusted developer workloads isolated, under a policy you can read, "
        "with a tamper-evident local record. Nothing leaves your machine unless you push."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"krate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        is_eager=True,
        callback=_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Run untrusted developer workloads isolated, with a tamper-evident local record.

    Example: krate run -- npm install
    """


app.command("info")(info.info)
app.add_typer(audit.app, name="audit")
