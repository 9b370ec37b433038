"""The one host:port splitter gives what the former copies gave (policy/hosts.py's
`split_host_port` and `parse_pattern`, the egress proxy's `split_hostport`)."""

from __future__ import annotations

import pytest

from krate import hostport
from krate.egress import parsers as proxy
from krate.policy import hosts

INPUTS = [
    "example.com", "example.com:8443", " example.com:80 ", "EXAMPLE.com:443", "example.com:",
    "[::1]", "[::1]:5000", "[::1]:", "[::1]x", "[::1", "::1", "2001:db8::1", "127.0.0.1:22",
    "a:b:c", "host:abc", "host:99999", "host:0", "[fe80::1]:65535", "bücher.de:8080", "",
    "*:22", "*.example.com:*", "[]:1", "h:١٢",
]  # fmt: skip


def _old_cli(text: str, default_port: int = 443):
    raw = text.strip()
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"`{text}`: missing `]` after an IPv6 address")
        host, rest = raw[: end + 1], raw[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"`{text}`: expected `:PORT` after `]`")
        port = rest[1:]
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    else:
        return raw, default_port
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"`{port}` is not a port number")
    return host, int(port)


def _old_proxy(text: str, default_port):
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after IPv6 literal")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit():
            raise ValueError("port is not a number")
        port = int(port_text)
    elif default_port is None:
        raise ValueError("port missing")
    else:
        port = default_port
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return proxy.normalize_host(host), port


def _outcome(fn, *args):
    try:
        return fn(*args)
    except ValueError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("text", INPUTS)
def test_policy_split_is_unchanged(text):
    assert _outcome(hosts.split_host_port, text) == _outcome(_old_cli, text)
    assert _outcome(hosts.split_host_port, text, 80) == _outcome(_old_cli, text, 80)


@pytest.mark.parametrize("text", INPUTS)
@pytest.mark.parametrize("default", [None, 80])
def test_proxy_split_is_unchanged_but_for_the_bracket_wording(text, default):
    new, old = _outcome(proxy.split_hostport, text, default), _outcome(_old_proxy, text, default)
    if old in (("error", "unterminated IPv6 literal"), ("error", "junk after IPv6 literal")):
        assert new[0] == "error" and "`]`" in new[1]
    else:
        assert new == old


def test_split_shapes():
    assert hostport.split(" [::1]:5000 ") == ("::1", "5000", True)
    assert hostport.split("[::1]") == ("::1", None, True)
    assert hostport.split("::1") == ("::1", None, False)
    assert hostport.split("h:") == ("h", "", False)
    with pytest.raises(ValueError, match="missing `]`") as err:
        hostport.split("[::1")
    assert "::1" not in str(err.value)  # the proxy records the reason: no client text in it
