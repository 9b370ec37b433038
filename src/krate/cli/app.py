"""The root `krate` app: one Typer app or command per group, mounted on demand.

`build(first)` mounts only the command the user named, so `krate run` does not
import (or have Typer inspect) thirty other commands; help, completion and
unknown commands get the whole tree. `app` is the whole tree, built on first use.
"""

from __future__ import annotations

from importlib import import_module

import typer

from krate import __version__
from krate.cli.common import started
from krate.cli.options import WORKLOAD_CONTEXT
from krate.cli.quickhelp import on_terminal

# name -> (module under krate.cli, attribute, kind): "group" is a Typer app, "command" a function.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("run", "run", "command"),
    "runs": ("runs", "app", "group"),
    "build": ("build", "build", "command"),
    "builds": ("builds", "app", "group"),
    "artifacts": ("artifacts", "app", "group"),
    "image": ("image", "app", "group"),
    "provenance": ("artifacts", "provenance", "command"),
    "policy": ("policy", "app", "group"),
    "audit": ("audit", "app", "group"),
    "data": ("data", "app", "group"),
    "login": ("registry", "login", "command"),
    "logout": ("registry", "logout", "command"),
    "push": ("registry", "push", "command"),
    "info": ("info", "info", "command"),
    "doctor": ("doctor", "doctor", "command"),
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"krate {__version__}")
        raise typer.Exit()


def _root() -> typer.Typer:
    root = typer.Typer(
        name="krate",
        help=(
            "Run untrusted developer workloads isolated, under a policy you can read, "
            "with a tamper-evident local record. Nothing leaves your machine unless you push.\n\n"
            "Example: krate run -- npm install"
        ),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @root.callback()
    def main(
        version: bool = typer.Option(
            False,
            "--version",
            "-V",
            is_eager=True,
            callback=_version,
            help="Print the version and exit. Example: krate --version",
        ),
    ) -> None:
        """Run untrusted developer workloads isolated, with a tamper-evident local record.

        Example: krate run -- npm install
        """
        started()  # every command's body runs after this, with the garbage collector on

    return root


def build(first: str | None = None, *, root_help: bool = False) -> typer.Typer:
    """The root app with only `first` mounted when it names a command, else everything.

    `root_help` (the line is `krate --help`): off a terminal, the commands are listed
    from the generated table (cli/complete_table.py ROOT) without importing their
    modules; on a terminal rich renders the real tree.
    """
    plain = not on_terminal()
    if plain:
        from krate.cli import plainhelp

        plainhelp.install(typer.core)  # the same help text, without rich's ~55 ms of imports
    root = _root()
    if root_help and plain:
        _mount_listing(root)
        return root
    names = [first] if first in COMMANDS else list(COMMANDS)
    for name in names:
        module_name, attribute, kind = COMMANDS[name]
        module = import_module(f"krate.cli.{module_name}")
        target = getattr(module, attribute)
        if kind == "group":
            root.add_typer(target, name=name)
        else:
            settings = WORKLOAD_CONTEXT if name in ("run", "build") else None
            root.command(name, context_settings=settings)(target)
    return root


def _mount_listing(root: typer.Typer) -> None:
    """Stand-ins that carry only what `krate --help` lists: name, kind and help."""
    from krate.cli.complete_table import ROOT

    for name, kind, help_ in ROOT:
        if kind == "group":
            root.add_typer(typer.Typer(help=help_), name=name)
        else:
            root.command(name, help=help_)(_listed_only)


def _listed_only() -> None:
    """Never called: `krate --help` exits before any command runs."""


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        full = build()
        globals()["app"] = full
        return full
    raise AttributeError(f"module 'krate.cli.app' has no attribute {name!r}")
