"""The body of `krate image pull`, without Typer: cli/fastread.py runs it on a line it parsed,
cli/image_pull.py (the Typer command, its options and help) on any other. The transport
was started at entry (cli/main.py); this takes it over and locks down first.
"""

from __future__ import annotations

import sys
from typing import Any

from krate.cli.common import paths
from krate.cli.registry_session import _credentials, _notices, _start_transport, _store_opener


def pull(ref: str, platform: str | None, plain_http: bool, quiet: bool, json_: bool) -> None:
    """Pull REF into the store; the config digest on stdout, progress and summary on stderr."""
    from krate import render

    transport = _start_transport()
    try:
        from krate.images import pull as domain
        from krate.registry import client
        from krate.store import open_store

        reference = domain.parse_reference(ref)
        explicit = platform is not None
        wanted = domain.parse_platform(platform) if explicit else domain.host_platform()

        def credentials():  # only if the registry asks: keyring stays unloaded otherwise
            return _credentials(reference.registry) or (
                _credentials(reference.endpoint)
                if reference.endpoint != reference.registry
                else None
            )

        if plain_http:
            render.message("krate: " + client.connection_for(reference.endpoint, True).warning)
        notices = _notices(reference.endpoint)
        with open_store(paths()) as store, _Progress(quiet) as progress:
            if _logged_in(store, {reference.registry, reference.endpoint}):
                _preload_keyring()  # while the transport connects; the registry may ask

            def on_message(message: dict[str, Any]) -> None:
                notices(message)
                progress.update(message)

            result = domain.pull(
                transport,
                store=store,
                open_store=_store_opener(),
                paths=paths(),
                ref=reference,
                platform=wanted,
                platform_explicit=explicit,
                ask_credentials=credentials,
                plain_http=plain_http,
                on_message=on_message,
            )
    finally:
        transport.abandon()
    if not quiet:
        where = f" ({result.platform})" if result.platform else ""
        kept = f", {len(result.present)} already in the store" if result.present else ""
        render.message(
            f"pulled {result.ref}{where}: {_size(result.bytes_received)} in "
            f"{len(result.fetched)} blob(s){kept}; manifest {result.manifest_digest}"
        )
    if json_:
        render.print_json(result.to_dict())
    else:
        sys.stdout.write(f"{result.image.config_digest}\n")


def _logged_in(store, registries: set[str]) -> bool:
    """Whether `krate login` kept credentials for one of these names: the newest
    credential.stored / credential.removed event says (names only, no keychain read)."""
    from krate.store import events

    for event in reversed(events.query(store, kind_prefix="credential.")):
        if event.data.get("registry") in registries:
            return event.kind == "credential.stored"
    return False


def _preload_keyring() -> None:
    """Import what reads the keychain in a thread while the transport connects, so a
    registry that asks for the login is answered sooner: secretstorage (~25 ms) and the
    first use of its cipher (~7 ms, secret_service.warm) where the Secret Service is read
    without keyring (registry/secret_service.py), else keyring and the keychain's backend
    (~80 ms). Only imports and local work: the keychain is opened and read on the main
    thread, and only if the registry asks (an error there is reported then)."""
    import os
    import threading

    from krate.registry import secret_service
    from krate.registry.backend_name import backend_name

    name = backend_name(os.environ)
    direct = secret_service.usable(name, os.environ)
    modules = [] if direct else ["keyring.core", name.rpartition(".")[0]]

    def load() -> None:
        import importlib

        try:
            if direct:
                secret_service.warm()  # secretstorage and its first decryption, no D-Bus
            for module in modules:
                importlib.import_module(module)
        except Exception:
            pass  # the main thread's own import says what is wrong, if it needs it

    threading.Thread(target=load, name="keyring-preload", daemon=True).start()


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class _Progress:
    """rich bars on stderr when it is a terminal (one per blob); nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None
        self.quiet = quiet
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        if not self.quiet and sys.stderr.isatty():
            from krate import render

            self.bar = render.transfer_bar()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, message: dict[str, Any]) -> None:
        if self.bar is None or message.get("type") not in ("progress", "blob"):
            return
        digest = str(message.get("digest"))
        task = self.tasks.get(digest)
        total = message.get("total", message.get("size"))
        if task is None:
            task = self.tasks[digest] = self.bar.add_task(digest[7:19], total=total)
        done = message.get("done", total)
        self.bar.update(task, completed=done)
