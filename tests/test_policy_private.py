"""`network.private_ok` / `--allow-private-host`: validated, layered, hashed; explain takes URLs.

What the opt-in does to real connections is in test_egress_hints.py; here, the
policy: a name pattern only, only for an allowed host, never from an untrusted
project file, dropped when a later layer narrows the host away.
"""

from __future__ import annotations

import json

import pytest

from krate.errors import UsageError
from krate.policy import Flags
from krate.policy.hosts import parse_private
from krate.policy.load import check_file
from krate.policy.model import PolicyError

from ._policy_util import effective

MIRROR = "npm.corp.example"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.5", "is an address: allow it with `allow`"),
        ("[::1]", "is an address"),
        ("npm.corp.example:443", "name the host without a port (`npm.corp.example`)"),
        ("*", "`*` would let every host resolve to private addresses"),
        ("http://npm.corp.example/", "is a URL or path"),
        ("bad..name", "empty label"),
    ],
)
def test_private_ok_takes_host_names_only(text, why):
    with pytest.raises(ValueError) as raised:
        parse_private(text)
    assert why in str(raised.value)


def test_private_ok_names_and_suffixes():
    assert parse_private("NPM.Corp.Example.").host == MIRROR
    assert parse_private("*.corp.example").kind == "suffix"


def test_file_errors_name_file_line_and_key(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[network]\nadd = ["x.example"]\nprivate_ok = ["10.0.0.5"]\n')
    assert check_file(policy) == [
        f"{policy}:3: `network.private_ok`: invalid host name: `10.0.0.5` is an address: "
        "allow it with `allow` (or --allow-host), which names it explicitly"
    ]
    policy.write_text('[network]\nprivate_ok = "x.example"\n')
    assert "`network.private_ok` must be a list of strings" in check_file(policy)[0]


def test_private_ok_needs_the_host_allowed_too(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    user = home / "policy.toml"
    user.write_text(f'# corp\n[network]\nprivate_ok = ["{MIRROR}"]\n')
    with pytest.raises(PolicyError) as raised:
        effective(tmp_path, home, user_policy=user)
    assert str(raised.value).startswith(f"{user}:3: `network.private_ok`: `{MIRROR}` is not in")
    with pytest.raises(UsageError, match=f"add --allow-host {MIRROR}"):
        effective(tmp_path, home, flags=Flags(allow_private_host=(MIRROR,)))
    with pytest.raises(UsageError, match="--allow-private-host 'x.example:1'"):
        effective(tmp_path, home, flags=Flags(allow_private_host=("x.example:1",)))

    user.write_text(f'[network]\nadd = ["*.corp.example"]\nprivate_ok = ["{MIRROR}"]\n')
    policy = effective(tmp_path, home, user_policy=user)
    assert policy.private_ok(MIRROR).rule == f"network.private_ok: {MIRROR}"
    assert policy.private_ok("other.corp.example") is None
    assert policy.private_ok("10.0.0.5") is None
    shown = policy.to_dict()["network"]["private_ok"]
    assert shown == [{"pattern": MIRROR, "rule": f"network.private_ok: {MIRROR}", "layer": "user"}]
    # Decision-relevant: part of the hash, while a policy without it keeps its old hash.
    user.write_text('[network]\nadd = ["*.corp.example"]\n')
    without = effective(tmp_path, home, user_policy=user)
    assert without.hash != policy.hash and "private_ok" not in without.to_dict()["network"]
    # A later layer that takes the host away takes the opt-in with it.
    user.write_text(f'[network]\nadd = ["*.corp.example"]\nprivate_ok = ["{MIRROR}"]\n')
    narrowed = effective(tmp_path, home, user_policy=user, flags=Flags(policy="strict"))
    assert narrowed.private_rules == () and narrowed.private_ok(MIRROR) is None


def test_an_untrusted_project_file_cannot_opt_in(tmp_path):
    """A repository must not switch the rebinding guard off for a host the user allowed."""
    home = tmp_path / "home"
    home.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    toml = ws / "krate.toml"
    toml.write_text('[network]\nprivate_ok = ["registry.npmjs.org"]\n')
    policy = effective(ws, home)
    assert policy.private_rules == ()
    assert any(
        note.startswith(f"{toml}:2: network.private_ok `registry.npmjs.org` ignored")
        for note in policy.ignored
    )


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("url", "subject"),
    [
        ("http://x.example/a?b=c", "x.example:80"),
        ("https://x.example/", "x.example:443"),
        ("HTTP://X.Example:8080", "x.example:8080"),
        ("http://[::1]:5432/db", "[::1]:5432"),
        ("x.example", "x.example:443"),
    ],
)
def test_explain_net_takes_a_url_as_allow_host_would(cli, here, url, subject):
    out = cli("policy", "explain", "net", url, "--no-resolve", "--json")
    assert out.code == 0, out.err
    assert json.loads(out.out)["subject"] == subject


def test_explain_net_bad_url_is_a_usage_error(cli, here):
    out = cli("policy", "explain", "net", "gopher2://x.example/")
    assert out.code == 2 and out.err.strip() == (
        "krate: explain net: `gopher2://x.example/`: no default port for `gopher2://`; add `:PORT`"
    )
    assert cli("policy", "explain", "net", "http:///nohost").code == 2
