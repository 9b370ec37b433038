"""Host names for the registry transport and for krate's side of it: where plain HTTP may go.

One of the transport's parts (loaded by exact file, standard library only), and
free of networking imports, so krate.registry.client decides the loopback
fallback with the very function the transport checks a token realm with.
"""

from __future__ import annotations

import ipaddress


def split_host(netloc: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host.lower(), int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit():
        return host.lower(), int(port)
    return netloc.lower(), default


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: the only hosts plain HTTP is ever allowed to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
