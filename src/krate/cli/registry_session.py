"""What login, push and image pull share once their transport is started: no Typer here.

`krate image pull` runs without Typer when cli/fastread.py parses its line (its start-up
is on the path of every pull); login and push (cli/registry.py) use the same pieces.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from krate.cli.common import lock_down, paths, take_transport


def _start_transport():
    """The helper started at entry (cli/main.py), or started now; then lock this process down."""
    from krate.registry.client import Transport, child_env

    transport = take_transport() or Transport.start(
        python=sys.executable, env=child_env(os.environ)
    )
    lock_down()
    return transport


def _store_opener():
    from krate.store import open_store

    where = paths()
    return lambda: open_store(where)


def _notices(registry: str):
    from krate import render
    from krate.registry.client import PLAIN_HTTP_NOTICE

    def show(message: dict[str, Any]) -> None:
        if message.get("type") == "notice" and message.get("plain_http"):
            render.message("krate: " + PLAIN_HTTP_NOTICE.format(registry=registry))

    return show


def _credentials(registry: str):
    """The stored credentials, or None (anonymous push) when there are none or no keychain."""
    from krate.errors import KrateError
    from krate.registry import keychain, secret_service

    name = keychain.backend_name(os.environ)
    # the Secret Service read without keyring's import when keyring would read it so
    raw = secret_service.lookup(name, keychain.SERVICE, registry, os.environ)
    if raw is not secret_service.UNSURE:
        return keychain.parse_entry(raw, registry)
    try:
        kc = keychain.open_keychain(name)
    except KrateError:
        return None  # a registry that needs a login says so, naming `krate login`
    return kc.get(registry)
