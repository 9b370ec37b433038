"""The registry transport started at entry, with nothing loaded but `subprocess`.

cli/main.py starts it for login, push and image pull before anything else the command
loads (and before the lockdown), so that the transport's own start (an interpreter,
http.client, ssl, the CA certificates: some 40 to 60 ms) overlaps krate's (Typer, the
store, the command); the command takes it over as a client.Transport
(cli/common.take_transport). client.py, with dataclasses and the job's logic, loads
later. Standard library only; it never opens a socket.
"""

from __future__ import annotations

import os
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transport.py")
# Variables the transport may see: OpenSSL's own CA bundle overrides, nothing else.
CHILD_ENV_NAMES = ("SSL_CERT_FILE", "SSL_CERT_DIR")

_held: list = []  # the started process, or the OSError that stopped it


def child_env(environ) -> dict[str, str]:
    """The transport's whole environment: OpenSSL's CA overrides, nothing secret."""
    return {k: environ[k] for k in CHILD_ENV_NAMES if environ.get(k)}


def start() -> None:
    """Start `python -I -S transport.py` now; a failure is reported when it is taken."""
    from krate import helper_process

    try:
        _held[:] = [helper_process.spawn(sys.executable, SCRIPT, env=child_env(os.environ))]
    except OSError as exc:
        _held[:] = [exc]


def take():
    """The process started at entry (once), or None; raises the OSError that stopped it."""
    if not _held:
        return None
    held = _held.pop()
    if isinstance(held, OSError):
        raise held
    return held
