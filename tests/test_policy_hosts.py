"""Host patterns and network decisions: the semantics the egress proxy relies on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krate.policy import hosts
from tests._policy_util import net_policy

LABELS = st.sampled_from(["a", "b", "com", "evil", "github", "npmjs", "x-y", "0", "9z"])
NAMES = (
    st.lists(LABELS, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda n: not n.rsplit(".", 1)[-1].isdigit())
)
PORTS = st.sampled_from([22, 80, 443, 8080, 8443, 65535])


def random_case(draw_text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c
        for c, f in zip(draw_text, flips + [False] * len(draw_text), strict=False)
    )


# -- names -----------------------------------------------------------------------------------


@settings(deadline=None)
@given(NAMES, st.lists(st.booleans(), max_size=40), st.booleans(), PORTS)
def test_names_are_case_insensitive_and_ignore_a_trailing_dot(name, flips, dot, port):
    policy = net_policy([f"{name}:*"])
    asked = random_case(name, flips) + ("." if dot else "")
    decision = policy.decide_net(asked, port)
    assert decision.verdict == "allow"
    assert decision.subject == f"{name}:{port}"
    # and the pattern side too
    assert net_policy([random_case(name, flips) + ".:*"]).decide_net(name, port).verdict == "allow"


@settings(deadline=None)
@given(NAMES, LABELS, PORTS)
def test_wildcard_matches_subdomains_only_never_the_apex_or_a_lookalike(suffix, label, port):
    policy = net_policy([f"*.{suffix}:*"])
    assert policy.decide_net(suffix, port).verdict == "deny"  # the apex
    assert policy.decide_net(label + suffix, port).verdict == "deny"  # evilgithub.com
    assert policy.decide_net(f"{label}.{suffix}", port).verdict == "allow"
    assert policy.decide_net(f"{label}.{label}.{suffix}", port).verdict == "allow"  # any depth
    elsewhere = f"{suffix}.{label}"
    if not elsewhere.endswith("." + suffix):
        assert policy.decide_net(elsewhere, port).verdict == "deny"  # the suffix elsewhere


def test_the_documented_wildcard_examples():
    policy = net_policy(["*.github.com", "*.a.com"])
    assert policy.decide_net("api.github.com", 443).verdict == "allow"
    for host in (
        "github.com",
        "malicious-github.com",
        "evilgithub.com",
        "a.com",
        "evila.com",
        "github.com.evil.net",
    ):
        assert policy.decide_net(host, 443).verdict == "deny", host


def test_idna_names_match_in_either_form():
    policy = net_policy(["bücher.de", "*.münchen.example"])
    assert policy.decide_net("xn--bcher-kva.de", 443).verdict == "allow"
    assert policy.decide_net("BÜCHER.de", 443).verdict == "allow"
    assert policy.decide_net("bücher.de.", 443).verdict == "allow"
    assert policy.decide_net("www.xn--mnchen-3ya.example", 443).verdict == "allow"
    assert policy.decide_net("buecher.de", 443).verdict == "deny"
    ascii_policy = net_policy(["xn--bcher-kva.de"])
    assert ascii_policy.decide_net("bücher.de", 443).verdict == "allow"
    assert net_policy(["bücher.de"]).network_allow == ("xn--bcher-kva.de",)


# -- ports -----------------------------------------------------------------------------------


@settings(deadline=None)
@given(NAMES, PORTS, PORTS)
def test_ports_are_respected(name, allowed, asked):
    policy = net_policy([f"{name}:{allowed}"])
    expected = "allow" if asked == allowed else "deny"
    assert policy.decide_net(name, asked).verdict == expected


@settings(deadline=None)
@given(NAMES, PORTS)
def test_no_port_means_the_web_ports_and_star_means_any(name, port):
    assert net_policy([name]).decide_net(name, port).verdict == (
        "allow" if port in (80, 443) else "deny"
    )
    assert net_policy([f"{name}:*"]).decide_net(name, port).verdict == "allow"


def test_invalid_ports_and_hosts_are_denied_not_crashing():
    policy = net_policy(["*:*"])
    assert policy.decide_net("example.com", 0).verdict == "deny"
    assert policy.decide_net("example.com", 70000).verdict == "deny"
    for bad in ("", "a..b", "-a.com", "exa mple.com", "[::1", "[1.2.3.4]", "a" * 300):
        decision = policy.decide_net(bad, 443)
        assert decision.verdict == "deny" and decision.rule == "invalid host name", bad


# -- addresses -------------------------------------------------------------------------------


def test_ipv6_in_brackets_with_ports():
    policy = net_policy(["[::1]:8080", "2001:db8::1", "[2001:DB8::2]:*"])
    assert policy.decide_net("::1", 8080).verdict == "allow"
    assert policy.decide_net("[::1]", 8080).verdict == "allow"
    assert policy.decide_net("0:0:0:0:0:0:0:1", 8080).verdict == "allow"
    assert policy.decide_net("::1", 8081).verdict == "deny"
    assert policy.decide_net("2001:db8::1", 443).verdict == "allow"
    assert policy.decide_net("2001:db8::1", 22).verdict == "deny"
    assert policy.decide_net("2001:db8:0::2", 22).verdict == "allow"
    assert policy.decide_net("::1", 8080).subject == "[::1]:8080"
    assert "[::1]:8080" in policy.network_allow


def test_ipv4_literals_and_mapped_addresses():
    policy = net_policy(["10.0.0.1:5432"])
    assert policy.decide_net("10.0.0.1", 5432).verdict == "allow"
    assert policy.decide_net("::ffff:10.0.0.1", 5432).verdict == "allow"
    assert policy.decide_net("10.0.0.2", 5432).verdict == "deny"
    assert policy.decide_net("10.0.0.1", 443).verdict == "deny"


def test_localhost_names_the_loopback_addresses():
    policy = net_policy(["localhost:5432"])
    for host in ("localhost", "LOCALHOST.", "127.0.0.1", "::1", "[::1]"):
        assert policy.decide_net(host, 5432).verdict == "allow", host
    assert policy.decide_net("127.0.0.2", 5432).verdict == "deny"
    assert policy.decide_net("localhost", 5433).verdict == "deny"


def test_wildcards_never_match_ip_addresses():
    with pytest.raises(ValueError):
        hosts.parse_pattern("*.0.0.1")
    assert net_policy(["*.com:*"]).decide_net("1.2.3.4", 443).verdict == "deny"


# -- the empty list and "any" ----------------------------------------------------------------


@settings(deadline=None)
@given(st.one_of(NAMES, st.sampled_from(["1.2.3.4", "::1", "localhost"])), PORTS)
def test_an_empty_allow_list_blocks_everything(host, port):
    policy = net_policy([])
    decision = policy.decide_net(host, port)
    assert decision.verdict == "deny"
    assert policy.network_allow == ()


@settings(deadline=None)
@given(st.one_of(NAMES, st.sampled_from(["1.2.3.4", "::1"])), PORTS)
def test_star_star_allows_any_host_on_any_port(host, port):
    assert net_policy(["*:*"]).decide_net(host, port).verdict == "allow"


# -- pattern validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "https://example.com",
        "example.com/path",
        "*example.com",
        "a.*.com",
        "*.*.com",
        "example.com:0",
        "example.com:99999",
        "example.com:http",
        "[::1",
        "[::1]8080",
        "[1.2.3.4]:80",
        "1:2:3",
        "exa mple.com",
        "a..com",
        "-bad.com",
        "x" * 64 + ".com",
        "1.2.3.999",
    ],
)
def test_invalid_patterns_are_refused_with_a_reason(text):
    with pytest.raises(ValueError) as info:
        hosts.parse_pattern(text)
    assert str(info.value)


# -- the set algebra used for narrowing ------------------------------------------------------

PATTERN_TEXTS = st.one_of(
    st.builds(lambda n, p: f"{n}{p}", NAMES, st.sampled_from(["", ":*", ":443", ":22"])),
    st.builds(lambda n, p: f"*.{n}{p}", NAMES, st.sampled_from(["", ":*", ":443", ":22"])),
    st.sampled_from(["*", "*:*", "*:443", "10.0.0.1", "[::1]:22", "localhost"]),
)
SUBJECTS = st.tuples(st.one_of(NAMES, st.sampled_from(["10.0.0.1", "::1", "127.0.0.1"])), PORTS)


def _matches(pattern: hosts.HostPattern, host: str, port: int) -> bool:
    norm = hosts.normalize_subject(host)
    assert norm is not None
    return pattern.matches(norm[0], port, norm[1])


@settings(max_examples=300, deadline=None)
@given(PATTERN_TEXTS, PATTERN_TEXTS, st.lists(SUBJECTS, min_size=1, max_size=10))
def test_intersect_allows_exactly_what_both_allow(a_text, b_text, subjects):
    for a in hosts.parse_pattern(a_text):
        for b in hosts.parse_pattern(b_text):
            both = hosts.intersect(a, b)
            for host, port in subjects:
                expected = _matches(a, host, port) and _matches(b, host, port)
                got = both is not None and _matches(both, host, port)
                assert got == expected, (a_text, b_text, host, port)


@settings(max_examples=300, deadline=None)
@given(st.lists(PATTERN_TEXTS, max_size=4), PATTERN_TEXTS, st.lists(SUBJECTS, max_size=10))
def test_covers_is_sound(rule_texts, wanted_text, subjects):
    rules = [p for text in rule_texts for p in hosts.parse_pattern(text)]
    for wanted in hosts.parse_pattern(wanted_text):
        if hosts.covers(rules, wanted):
            for host, port in subjects:
                if _matches(wanted, host, port):
                    assert any(_matches(r, host, port) for r in rules), (rule_texts, wanted_text)


def test_decisions_name_the_rule_and_layer():
    decision = net_policy(["*.npmjs.org"]).decide_net("registry.npmjs.org", 443)
    assert decision.to_dict() == {
        "verdict": "allow",
        "rule": "network.allow: *.npmjs.org",
        "layer": "builtin:test",
        "subject": "registry.npmjs.org:443",
    }
