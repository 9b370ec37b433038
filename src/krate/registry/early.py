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
# Its one argument: do not read the system's CA certificates before the job (transport.py).
TLS_LATER = "--tls-later"

_held: list = []  # the started process, or the OSError that stopped it


def child_env(environ) -> dict[str, str]:
    """The transport's whole environment: OpenSSL's CA overrides, nothing secret."""
    return {k: environ[k] for k in CHILD_ENV_NAMES if environ.get(k)}


def start(args: list[str] | tuple[str, ...] = ()) -> None:
    """Start `python -I -S transport.py` now; a failure is reported when it is taken.

    When the command line names a loopback registry (`localhost:5000/app:1`), which is
    mostly plain HTTP, the transport is told not to read the system's CA certificates
    ahead of the job (some 20 to 40 ms of CPU, which the command's own start-up needs):
    a hint about speed only, since the transport decides from the job what it trusts.
    """
    from krate import helper_process

    extra = (TLS_LATER,) if any(names_loopback(a) for a in args) else ()
    try:
        _held[:] = [
            helper_process.spawn(sys.executable, SCRIPT, env=child_env(os.environ), args=extra)
        ]
    except OSError as exc:
        _held[:] = [exc]


def names_loopback(word: str) -> bool:
    """Whether a command-line word starts with a loopback registry (`localhost`, `127.*`,
    `[::1]`, with or without a port or a path). String checks only: nothing is imported."""
    host = word.partition("/")[0].lower()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host in ("localhost", "::1") or (host.startswith("127.") and host.count(".") == 3)


def take():
    """The process started at entry (once), or None; raises the OSError that stopped it."""
    if not _held:
        return None
    held = _held.pop()
    if isinstance(held, OSError):
        raise held
    return held
