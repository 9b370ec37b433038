"""`krate policy`: list, show, check, explain, init, allow, edit, trust, untrust.

Commands parse, call one function of krate.policy, and render. The policy
package is imported inside each command (start-up time).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from krate.cli import views
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
    views.policy_list(json_)


@app.command()
@policy_options
def show(json_: bool = JSON, *, flags) -> None:
    """Show the effective policy here, each rule with its layer, and any ignored widenings.

    Takes the same policy options as `krate run`, to preview a run.

    Example: krate policy show --policy strict --allow-host api.example.com
    """
    views.policy_show(json_, flags)


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
    A denial ends with the flag that would allow it (and, for a private address, the
    `krate policy allow --private` command that allows it in every run).
    Exit 0 whatever the verdict.

    Example: krate policy explain net github.com:22 --json
    """
    views.policy_explain(kind, subject, json_, no_resolve, flags)


USER = typer.Option(
    False, "--user", help="Your user policy (applied to every run). Example: --user"
)
PROJECT = typer.Option(
    False,
    "--project",
    help="The project's krate.toml (the nearest above here) instead. Example: --project",
)


@app.command()
def init(
    user: bool = USER,
    force: bool = typer.Option(
        False, "--force", help="Overwrite an existing file. Example: --user --force"
    ),
) -> None:
    """Write a commented policy template: krate.toml in this folder, or your user policy.

    Refuses to overwrite an existing file unless --force.

    Example: krate policy init --user && krate policy edit
    """
    from krate import render
    from krate.policy.edit import init_user
    from krate.policy.manage import init_template

    if user:
        target = init_user(paths().user_policy, force=force)
    else:
        target = init_template(Path.cwd(), force=force)
    render.message(f"wrote {target}; check it with `krate policy check {target}`")


@app.command()
def allow(
    host: str = typer.Argument(
        ..., metavar="HOST[:PORT]", help="A host pattern as in `network.allow`, or a URL."
    ),
    project: bool = PROJECT,
    private: bool = typer.Option(
        False,
        "--private",
        help="The host may resolve to a private or loopback address (a corporate mirror): "
        "add its name to `network.private_ok` too. Example: --private npm.corp.example",
    ),
) -> None:
    """Allow a host for later runs: append it to your user policy's `network.add`.

    Validated as `krate policy check` does; comments and layout are kept; a host
    already listed is not added twice. With --private the name also goes into
    `network.private_ok` (the fix for a "resolves to a private address" denial).

    Example: krate policy allow npm.corp.example:8443
    """
    from krate import render
    from krate.policy.edit import allow_host, allow_private

    target, template, mode = _target(project)
    before = _trust_state(target) if project else None
    if private:
        steps = allow_private(target, host, template=template, mode=mode)
    else:
        steps = [allow_host(target, host, template=template, mode=mode)]
    unchanged = all(done.already for done in steps)
    for i, done in enumerate(steps):
        if not done.already:
            render.message(f"added {done.entry} to {target} ({done.key})")
            continue
        end = "; nothing changed" if unchanged and i == len(steps) - 1 else ""
        render.message(f"{done.entry} is already in {target} ({done.key}){end}")
    if project and not unchanged:
        _project_note(target, before)


@app.command()
def edit(project: bool = PROJECT) -> None:
    """Open your user policy (or the project's krate.toml) in $VISUAL or $EDITOR (else vi).

    The editor works on a private copy; the file is replaced only when the copy passes
    `krate policy check`. Otherwise the problems are shown (FILE:LINE: message) and, on a
    terminal, the editor re-opens; without one nothing is saved (exit 1).

    Example: EDITOR=nano krate policy edit --project
    """
    import os
    import shlex

    from krate import render
    from krate.errors import KrateError, UsageError
    from krate.policy.edit import edit as edit_file

    target, template, mode = _target(project)
    before = _trust_state(target) if project else None
    command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        editor = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"cannot read the editor command {command!r}: {exc}") from None
    if not editor:
        editor = ["vi"]

    shown: list[str] = []

    def again(problems: list[str]) -> bool:
        for line in problems:
            sys.stderr.write(line + "\n")
        shown[:] = problems
        return typer.confirm("krate: not valid; re-open the editor?", default=True, err=True)

    done = edit_file(
        target,
        editor,
        template=template,
        again=again if sys.stdin.isatty() and sys.stderr.isatty() else None,
        mode=mode,
    )
    if done.outcome == "unchanged":
        render.message(f"no change to {target}")
    elif done.outcome == "saved":
        render.message(f"saved {target}")
        if project:
            _project_note(target, before)
    elif done.outcome == "conflict":
        raise KrateError(
            f"{target} changed while the editor was open; nothing saved (your edit is kept "
            f"in {done.kept}: compare, then run `krate policy edit` again)"
        )
    else:
        for line in done.problems if list(done.problems) != shown else ():
            sys.stderr.write(line + "\n")
        raise KrateError(f"nothing saved to {target}; your edit is kept in {done.kept}")


def _target(project: bool) -> tuple[Path, str, int | None]:
    """The file `allow`/`edit` change, the template a new one starts from, and its mode:
    the user policy is kept 0600 (krate's files are private); a project file keeps its
    own (a new one is 0644, as `policy init` writes it: it is meant to be committed)."""
    from krate.policy.edit import USER_TEMPLATE
    from krate.policy.layers import find_project_files
    from krate.policy.load import PROJECT_FILE
    from krate.policy.manage import TEMPLATE

    if not project:
        return paths().user_policy, USER_TEMPLATE, 0o600
    found = find_project_files(Path.cwd())
    if found:
        return found[-1], TEMPLATE, None
    return Path.cwd() / PROJECT_FILE, TEMPLATE, 0o644


def _trust_state(path: Path) -> str | None:
    from krate.policy.manage import trust_state

    if not path.exists():
        return None
    trusted, _ = read_trust(paths())
    return trust_state(path, trusted)


def _project_note(path: Path, before: str | None) -> None:
    """A project file widens only once trusted, and an edit revokes its trust: say so."""
    from krate import render

    why = "this edit revoked its trust" if before == "trusted" else "it is not trusted"
    render.message(
        f"note: {path.name} may only narrow the policy while {why}; read it, then run "
        f"`krate policy trust {path}` to let the new host take effect"
    )


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
