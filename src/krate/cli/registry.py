"""`krate login`, `krate logout`, `krate push`: the only commands that reach the network.

login and push start the registry transport helper *first* (cli/main.py does,
before Typer or any other third-party package is imported), then lock krate's own
process out of IP sockets, and only then load keyring, open the store and read
the artifact. Credentials are read from a prompt without echo or from stdin,
handed to the keychain and to the transport's stdin, and nowhere else.
Only typer and the standard library at the top.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from krate.cli.common import paths
from krate.cli.registry_session import _credentials, _notices, _start_transport, _store_opener

PLAIN_HTTP = typer.Option(
    False,
    "--plain-http",
    help="Use plain HTTP (unencrypted) even though the registry is not on this machine. "
    "Example: krate push app.tar.gz 10.0.0.5:5000/me/app:1 --plain-http",
)


def _read_password(password_stdin: bool) -> str:
    from krate.errors import UsageError

    if password_stdin:
        secret = sys.stdin.read()
        secret = secret[:-1] if secret.endswith("\n") else secret
        secret = secret[:-1] if secret.endswith("\r") else secret
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password: pipe it with --password-stdin")
        import getpass

        secret = getpass.getpass("Password: ")
    if not secret:
        raise UsageError("the password is empty; nothing was stored")
    return secret


def login(
    registry: str = typer.Argument(..., help="The registry host, e.g. ghcr.io or localhost:5000."),
    username: str = typer.Option(None, "--username", "-u", help="Your user name there."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password (or token) from stdin."
    ),
    plain_http: bool = PLAIN_HTTP,
) -> None:
    """Check credentials against a registry and keep them in the OS keychain.

    Nothing is stored unless the registry accepts them; never in a file or the record.

    Example: echo "$TOKEN" | krate login ghcr.io -u me --password-stdin
    """
    from krate import render
    from krate.errors import UsageError

    transport = _start_transport()
    try:
        from krate.registry import client, keychain

        name = client.parse_registry(registry)
        kc = keychain.open_keychain(keychain.backend_name(os.environ))
        if username is None:
            if password_stdin or not sys.stdin.isatty():
                raise UsageError("name the user with -u USER")
            username = typer.prompt("Username", err=True)
        if not username.strip():
            raise UsageError("the user name is empty")
        password = _read_password(password_stdin)
        if plain_http:
            render.message("krate: " + client.connection_for(name, True).warning)
        result = client.login(
            transport,
            open_store=_store_opener(),
            keychain=kc,
            registry=name,
            username=username,
            password=password,
            plain_http=plain_http,
            on_message=_notices(name),
        )
        del password
    finally:
        transport.abandon()
    render.message(
        f"Logged in to {result.registry} as {result.username}; "
        f"credentials kept in the {result.keychain}"
    )


def logout(
    registry: str = typer.Argument(..., help="The registry host, e.g. ghcr.io."),
) -> None:
    """Remove the registry's credentials from the OS keychain.

    Example: krate logout ghcr.io
    """
    from krate import render
    from krate.errors import NotFound
    from krate.registry import client, keychain

    name = client.parse_registry(registry)
    kc = keychain.open_keychain(keychain.backend_name(os.environ))
    if not client.logout(open_store=_store_opener(), keychain=kc, registry=name):
        raise NotFound(f"not logged in to {name}: the {kc.label} holds no krate entry for it")
    render.message(f"Removed the credentials for {name} from the {kc.label}")


def push(
    artifact: str = typer.Argument(
        ..., help="The artifact: a digest, a unique digest prefix, or its file name."
    ),
    ref: str = typer.Argument(..., help="Where: registry/repository:tag."),
    plain_http: bool = PLAIN_HTTP,
) -> None:
    """Push a stored artifact and its provenance to an OCI registry; prints the manifest digest.

    Safe to repeat: blobs the registry already has are skipped.

    Example: krate push dist/app.tar.gz ghcr.io/me/app:1.0
    """
    from krate import render

    transport = _start_transport()
    try:
        from krate.registry import client
        from krate.registry import push as domain
        from krate.store import open_store

        reference = client.parse_reference(ref)
        with open_store(paths()) as store:
            plan = domain.plan(store, paths(), artifact, reference)
            credentials = _credentials(reference.registry)
            if plain_http:
                render.message("krate: " + client.connection_for(reference.registry, True).warning)
            notices = _notices(reference.registry)
            with _Progress(plan) as progress:

                def on_message(message: dict[str, Any]) -> None:
                    notices(message)
                    progress.update(message)

                result = domain.push(
                    transport,
                    store=store,
                    open_store=_store_opener(),
                    plan=plan,
                    credentials=credentials,
                    plain_http=plain_http,
                    on_message=on_message,
                )
    finally:
        transport.abandon()
    skipped = f", {len(result.present)} already there" if result.present else ""
    render.message(
        f"pushed {plan.artifact_name} to {result.reference} ({result.bytes_sent} bytes in "
        f"{len(result.uploaded)} blob(s){skipped}; provenance {result.provenance_digest} "
        f"via the referrers {result.referrers})"
    )
    typer.echo(result.manifest_digest)


class _Progress:
    """A rich progress bar on a terminal (stderr); nothing at all on a pipe."""

    def __init__(self, plan) -> None:
        self.plan = plan
        self.bar = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from krate import render

            self.bar = render.transfer_bar()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, message: dict[str, Any]) -> None:
        if self.bar is None or message.get("type") != "progress":
            return
        digest = str(message.get("digest"))
        task = self.tasks.get(digest)
        if task is None:
            label = self.plan.artifact_name if digest == self.plan.artifact_digest else digest[:19]
            task = self.tasks[digest] = self.bar.add_task(label, total=message.get("total"))
        self.bar.update(task, completed=message.get("done"))
