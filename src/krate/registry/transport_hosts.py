"""Host names for the registry transport and for krate's side of it: where plain HTTP may go.

One of the transport's parts (loaded by exact file, standard library only), and
free of networking imports, so krate.registry.client parses a registry name and
decides the loopback fallback with the very functions the transport uses on the
registry, its token realm and its redirects. `split_host` is built on
krate/hostport.py, the one HOST:PORT splitter (the transport loads it by exact file
too), so the policy, the egress proxy and the registry read host:port text alike.
"""

from __future__ import annotations

import ipaddress

from krate.hostport import split


def split_host(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """`HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` -> (lower-case host, port or `default_port`).

    Raises ValueError for a missing `]`, anything but `:PORT` after it, or a port that
    is not 1-65535 in ASCII digits. An IPv6 address without brackets is one host
    without a port (`::1:5000` is an address), as everywhere in krate.
    """
    host, port, _ = split(text)
    if port is None:
        return host.lower(), default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("the port is not a number from 1 to 65535")
    return host.lower(), int(port)


def scheme_port(scheme: str) -> int:
    """The port a URL of this scheme means when it names none."""
    return 443 if scheme == "https" else 80


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: the only hosts plain HTTP is ever allowed to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
