"""Options and settings several commands share, so their names and help read the same."""

from __future__ import annotations

import typer

JSON = typer.Option(False, "--json", help="Print JSON. Example: --json | jq .")
NEWEST = typer.Option(
    None, "--limit", min=0, help="Only the newest N (still newest last). Example: --limit 10"
)


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
