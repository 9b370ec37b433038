"""The end-of-run summary from recorded decisions (the real runs are in test_egress_hints.py)."""

from __future__ import annotations

from krate.denials import summary_lines


def deny(host, port, **extra) -> dict:
    return {"area": "network", "verdict": "deny", "host": host, "port": port, **extra}


def test_nothing_denied_on_the_network_prints_nothing():
    env_only = [{"area": "env", "verdict": "deny", "subject": "GITHUB_TOKEN"}]
    allowed = [{"area": "network", "verdict": "allow", "host": "a.example", "port": 443}]
    assert summary_lines(env_only + allowed, ["GITHUB_TOKEN"]) == []


def test_hints_from_the_record_or_made_the_same_way_for_decisions_without_one():
    """The proxy records a hint; a decision another part recorded (a DNS refusal) has none."""
    lines = summary_lines(
        [
            deny("a.example", 443, hint="--allow-host a.example", reason="x"),
            deny("a.example", 443, repeats=4),
            deny("b.example", 8080),  # no hint, no reason
            deny("c.example", 443, reason="c.example resolves to 10.0.0.7 (private address)"),
            deny("::1", 5432),
        ]
    )
    assert lines[0] == "krate: 8 connections refused:"
    assert lines[1] == "krate:   a.example:443 (5x): x; allow with --allow-host a.example"
    assert (
        "krate:   b.example:8080 (1x): not in network.allow; allow with --allow-host " in lines[2]
    )
    assert lines[2].endswith("b.example:8080")
    assert lines[3] == (
        "krate:   c.example:443 (1x): resolves to 10.0.0.7 (private address); "
        "allow with --allow-private-host c.example"
    )
    assert lines[4].endswith(
        "[::1]:5432 (1x): not in network.allow; allow with --allow-host [::1]:5432"
    )
    assert lines[5] == "krate:   or for every run: krate policy allow --private c.example"
    assert lines[6] == (
        "krate:   or in a policy file's [network] table: "
        'add = ["a.example", "b.example:8080", "[::1]:5432"]; private_ok = ["c.example"]'
    )
    assert lines[-1] == "krate: details: krate runs show last"


def test_many_hosts_stay_a_few_lines_with_the_strips_apart():
    decisions = [deny(f"h{i}.example", 443) for i in range(300)]
    decisions.append(deny(None, None, repeats=1000, subject="(further denied hosts)"))
    names = ["A_TOKEN", "B_TOKEN", "C_TOKEN", "D_TOKEN", "E_TOKEN"]
    lines = summary_lines(decisions, names)
    assert len(lines) == 10
    assert lines[0] == "krate: 1300 connections refused:"
    assert lines[6] == "krate:   and 295 more hosts (1295 connections)"
    assert lines[8] == (
        "krate: 5 secret-looking variables stripped (A_TOKEN, B_TOKEN, C_TOKEN, D_TOKEN, ...); "
        "--env NAME passes one"
    )


def test_no_flag_is_offered_where_none_would_help():
    capped = deny("a.example", 443, rule="connection cap", layer="proxy", reason="too many")
    lines = summary_lines([capped])
    assert lines == [
        "krate: 1 connection refused:",
        "krate:   a.example:443 (1x): too many",
        "krate: details: krate runs show last",
    ]


def test_a_private_address_denial_names_the_policy_command_with_its_port():
    lines = summary_lines(
        [
            deny("m.corp", 8080, hint="--allow-private-host m.corp", reason="m.corp resolves"),
            deny("m.corp", 80, hint="--allow-private-host m.corp", reason="m.corp resolves"),
            deny("127.0.0.1", 9, hint="--allow-host 127.0.0.1:9", reason="a loopback address"),
        ]
    )
    fixes = [line for line in lines if "for every run" in line]
    assert fixes == [
        "krate:   or for every run: krate policy allow --private m.corp:8080",
        "krate:   or for every run: krate policy allow --private m.corp",
    ]
