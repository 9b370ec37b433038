"""Options and settings several commands share, so their names and help read the same.

Typer has no option groups: `sharing` splices a group of options into each command's
signature, so the group is written once and its commands get it as one value.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

JSON = typer.Option(False, "--json", help="Print JSON. Example: --json | jq .")
NEWEST = typer.Option(
    None, "--limit", min=0, help="Only the newest N (still newest last). Example: --limit 10"
)


def repeatable(flag: str, *short: str, metavar: str, help: str) -> Any:
    """The type of an option given any number of times (None when never given)."""
    return Annotated[list[str] | None, typer.Option(flag, *short, metavar=metavar, help=help)]


def parameters(**specs: tuple[Any, Any]) -> tuple[inspect.Parameter, ...]:
    """Command parameters from `name=(annotation, default)`, in order, for `sharing`."""
    kind = inspect.Parameter.KEYWORD_ONLY
    return tuple(
        inspect.Parameter(name, kind, default=default, annotation=annotation)
        for name, (annotation, default) in specs.items()
    )


def sharing(options: tuple[inspect.Parameter, ...], make: Callable[..., Any]):
    """Decorate a Typer command to take `options`, which several commands share, as one value.

    Typer reads a command's options from its signature, so they are spliced into it in
    place of the command's last parameter (keyword-only, e.g. `*, flags`), which then
    receives `make(**their values)`: each command lists them in the same order, with the
    same help, without writing them out again.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        *own, slot = inspect.signature(command, eval_str=True).parameters.values()
        spliced = [*own, *options]

        @functools.wraps(command)
        def with_options(**given: Any) -> Any:
            shared = {option.name: given.pop(option.name) for option in options}
            return command(**given, **{slot.name: make(**shared)})

        with_options.__signature__ = inspect.Signature(spliced)  # type: ignore[attr-defined]
        with_options.__annotations__ = {
            p.name: p.annotation for p in spliced if p.annotation is not p.empty
        }
        return with_options

    return decorate


def as_root_option(example: str):
    """`--as-root` of `krate run` and `krate build` (sandbox/identity.py)."""
    return typer.Option(
        False,
        "--as-root",
        help="As root only: run the workload with host root's identity (recorded; "
        "capabilities still dropped, system and /proc knobs read-only). Without it a root "
        "krate runs the workload as the workspace's owner, and refuses a root-owned "
        f"workspace. No effect when krate does not run as root. Example: {example}",
    )


ALLOW_BROAD_WORKSPACE = typer.Option(
    False,
    "--allow-broad-workspace",
    help="Run even when the workspace is /, your home folder, or a folder holding it or a "
    "hidden secret store (the workload could change any file there). "
    "Example: --allow-broad-workspace",
)
# `krate run`/`krate build`: everything after CMD is CMD's own, never krate's.
WORKLOAD_CONTEXT = {"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]}
