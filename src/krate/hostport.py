"""Split `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`: the one parser for host:port text.

Used by the policy (allow entries, `krate policy explain net`) and by the egress proxy
(CONNECT targets, URI authorities, the bridge's hand-over), which loads it as one of
the files krate names (egress/helperlib.py): standard library only, and nothing at all.
Each caller checks the port itself: they accept different ranges and `*`.
"""

from __future__ import annotations


def split(text: str) -> tuple[str, str | None, bool]:
    """(host without brackets, the port's text or None, whether the host was bracketed).

    The text is stripped first. More than one colon without brackets is an IPv6 address
    without a port. Raises ValueError, without repeating the input, for a missing `]` or
    anything but `:PORT` after it.
    """
    raw = text.strip()
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError("missing `]` after an IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("expected `:PORT` after `]`")
        return host, rest[1:] if rest else None, True
    if raw.count(":") == 1:
        host, port = raw.split(":")
        return host, port, False
    return raw, None, False
