"""A registry's host and port: one splitter (transport_hosts.split_host, on krate/hostport.py)
for krate's side and the transport, read as docker reads a registry reference."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from krate.errors import UsageError
from krate.registry import client
from krate.registry.transport_hosts import split_host

from .conftest import run_krate

TRANSPORT = client.TRANSPORT


def _old_split_registry(registry: str):
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = registry.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return registry, None


def _old_split_host(netloc: str, scheme: str):
    default = 443 if scheme == "https" else 80
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host.lower(), int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit():
        return host.lower(), int(port)
    return netloc.lower(), default


def _outcome(fn, *args):
    try:
        return fn(*args)
    except ValueError:
        return "error"


SAME = ["ghcr.io", "ghcr.io:443", "localhost:5000", "127.0.0.1:5000", "[::1]", "[::1]:5000",
        "[fe80::1]:65535", "registry.example.com:8443", "Registry.Example.COM:5000"]  # fmt: skip
# What the former copies got wrong, and what is read now.
FIXED = {
    "::1:5000": ("::1:5000", None),  # an IPv6 address in its own right, not [::1]:5000
    "2001:db8::1": ("2001:db8::1", None),  # was host `2001:db8:`, port 1
    "[::1": "error",  # was host ::1
    "[::1]x": "error",  # was host ::1
    "localhost:٥٠٠٠": "error",  # Arabic-Indic digits were port 5000
    "host:99999": "error",  # out of range: was left to the caller
    "host:0": "error",
}


@pytest.mark.parametrize("text", SAME)
def test_both_former_splitters_agree_with_the_one_left(text):
    assert split_host(text) == _old_split_registry(text.lower())
    for scheme in ("https", "http"):
        default = 443 if scheme == "https" else 80
        assert split_host(text, default) == _old_split_host(text, scheme)


@pytest.mark.parametrize("text, expected", FIXED.items())
def test_what_the_former_splitters_misread(text, expected):
    assert _outcome(split_host, text) == expected
    assert _outcome(_old_split_registry, text) != expected


def test_a_registry_written_as_an_unbracketed_ipv6_address_is_refused_with_a_hint():
    """docker refuses it too (distribution/reference: IPv6 only between brackets)."""
    for text in ("::1:5000", "fe80::1:5000"):
        with pytest.raises(UsageError, match=r"in brackets, e\.g\. \[::1\]:5000"):
            client.parse_registry(text)
        with pytest.raises(UsageError, match="in brackets"):
            client.parse_reference(f"{text}/app:1")
    assert client.parse_registry("[::1]:5000") == "[::1]:5000"
    assert client.is_loopback("[::1]:5000") and not client.is_loopback("[fe80::1]:5000")


@pytest.mark.parametrize("text", ["[::1]:abc", "[::1", "[::1]x", "localhost:٥٠٠٠", "h:99999"])
def test_a_malformed_registry_is_a_usage_error(text):
    with pytest.raises(UsageError, match="is not a registry host name"):
        client.parse_registry(text)


def test_the_cli_says_so_in_one_line_with_exit_2(krate_home):
    result = run_krate("login", "[::1]:abc", "-u", "me", "--password-stdin", input="pw\n")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("krate: ") and "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _transport_parts():
    """The transport's parts as it loads them itself (by exact file, hostport.py included)."""
    spec = importlib.util.spec_from_file_location("krate_transport_parts", TRANSPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_transport_refuses_a_token_realm_or_redirect_with_an_unusable_port():
    from krate.registry import transport_auth, transport_http

    auth = transport_auth.Auth("r.example", {}, set())
    with pytest.raises(transport_http.Failure) as caught:
        auth._realm("https://auth.example:99999/token", "https")
    assert caught.value.code == "protocol" and "99999" not in str(caught.value)
    assert auth.allowed == set()
    pool = transport_http.Pool("r.example", "https", {})
    with pytest.raises(transport_http.Failure):
        pool.send("GET", "https://r.example:http/v2/")
    assert _transport_parts().SHARED == client.TRANSPORT_SHARED


def test_the_isolated_transport_loads_exactly_the_files_krate_names(tmp_path):
    """hostport.py is now one of them: the proof's helpers layer allows exactly this list."""
    transport = client.Transport.start(python=sys.executable, env={})
    report = transport.import_report()
    stdlib = os.path.dirname(os.__file__)
    own = {f for f in report["files"] if not f.startswith(stdlib)}
    assert own == {str(f) for f in client.TRANSPORT_FILES}
    assert str(TRANSPORT.parent.parent / "hostport.py") in own
