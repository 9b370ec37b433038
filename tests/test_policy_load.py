"""Loading policy files: FILE:LINE errors, did-you-mean, and a fuzzed loader that never crashes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krate.errors import KrateError
from krate.policy.layers import compile_layers
from krate.policy.load import check_file, load_file, parse_text
from krate.policy.manage import TEMPLATE

SRC = Path("/p/krate.toml")


def problems(text: str) -> list[tuple[int, str]]:
    layer, found = parse_text(text, source=SRC, name="project", trusted=False)
    assert (layer is None) == bool(found)
    return [(p.line, p.message) for p in found]


def test_the_template_and_an_empty_file_are_valid():
    assert problems(TEMPLATE) == []
    assert problems("") == []
    # The template with every example uncommented is valid too.
    uncommented = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", TEMPLATE)
    assert '\nallow = ["registry.npmjs.org"' in uncommented
    assert '\nprofile = "default"' in uncommented
    assert problems(uncommented) == []


def test_syntax_errors_carry_the_line_tomllib_reports():
    assert problems('[network]\nallow = ["a.com"\n\n[env]\n') == [
        (4, "TOML syntax error: Unclosed array")
    ]
    assert problems("a = 1\n\nb = = 2\n") == [(3, "TOML syntax error: Invalid value")]
    assert problems("[network]\nallow = [\n") == [
        (2, "TOML syntax error: Invalid value at the end of the file")
    ]
    assert problems("x = 1\nx = 2\n") == [(2, "TOML syntax error: Cannot overwrite a value")]


def test_unknown_keys_suggest_the_closest_and_name_their_line():
    text = (
        '# comment\n[netwrok]\nallow = []\n\n[filesystem]\ndeny_reed = ["x"]\nallow_write = ["y"]\n'
    )
    assert problems(text) == [
        (2, "unknown key `netwrok` (did you mean `network`?)"),
        (6, "unknown key `filesystem.deny_reed` (did you mean `deny_read`?)"),
    ]
    assert problems('allow_write = ["x"]\n') == [
        (1, "unknown key `allow_write` (did you mean `filesystem.allow_write`?)")
    ]
    assert problems("[limits]\nmemory = 5\n") == [
        (2, "unknown key `limits.memory` (did you mean `memory_mb`?)")
    ]
    assert problems('profile = "strcit"\n')[0] == (
        1,
        "unknown profile `strcit` (did you mean `strict`?); choose one of strict, default, open",
    )


def test_wrong_types_name_their_line():
    text = (
        '[network]\nallow = "a.com"\n[limits]\ncpu_seconds = true\nmemory_mb = 1.5\nprocesses = 0\n'
    )
    assert problems(text) == [
        (2, "`network.allow` must be a list of strings, not a string"),
        (4, "`limits.cpu_seconds` must be a whole number, not a boolean"),
        (5, "`limits.memory_mb` must be a whole number, not a decimal number"),
        (6, "`limits.processes` must be between 1 and 1099511627776"),
    ]
    assert problems("network = 5\n") == [(1, "`network` must be a table ([network]), not a number")]
    # a time the kernel's timers cannot hold used to pass, then fail once the workload ran
    assert problems("[limits]\nmemory_mb = 5\nwall_seconds = 10000000000\n") == [
        (3, "`limits.wall_seconds` must be between 1 and 315360000 (10 years)")
    ]
    assert problems("[limits]\ncpu_seconds = 9300000000\n")[0][0] == 2
    assert problems("[env]\nstrip = [1]\n") == [
        (2, "`env.strip` entries must be strings, not a number")
    ]


def test_bad_hosts_and_paths_name_the_line_of_the_value():
    text = (
        "[network]\n"
        "allow = [\n"
        '  "registry.npmjs.org",\n'
        '  "https://evil.example/x",\n'
        '  "*.ok.example:99999",\n'
        "]\n"
        "[filesystem]\n"
        'deny_read = ["~/.ssh/*", "~bob/x"]\n'
        "[env]\n"
        'pass = ["A=B"]\n'
    )
    found = problems(text)
    assert [line for line, _ in found] == [4, 5, 8, 8, 10]
    assert "is a URL or path" in found[0][1]
    assert "port `99999`" in found[1][1]
    assert "globs are not supported" in found[2][1]
    assert "not ~user" in found[3][1]
    assert "not a variable name pattern" in found[4][1]


def test_dotted_keys_and_inline_tables_are_located():
    assert problems('network.allow = ["x y"]\n')[0][0] == 1
    assert problems('\n\nnetwork = { allow = ["x y"] }\n')[0][0] == 3
    assert problems('[network]\n"allow" = ["bad host"]\n')[0][0] == 2


def test_check_file_and_load_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[network]\nallow = ["a.example"]\n')
    assert check_file(good) == []
    assert load_file(good, name="user", trusted=True).layer.net_allow[0].text == "a.example"

    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nalow = []\nadd = ["http://x"]\n')
    assert check_file(bad) == [
        f"{bad}:2: unknown key `network.alow` (did you mean `allow`?)",
        f"{bad}:3: `network.add`: invalid host pattern: `http://x` is a URL or path; "
        "write only the host, e.g. `example.com`",
    ]
    with pytest.raises(KrateError) as info:
        load_file(bad, name="user", trusted=True)
    assert str(info.value).startswith(f"{bad}:2: unknown key")
    assert "and 1 more" in str(info.value)

    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'a = "ok"\n\xff\xfe\n')
    assert check_file(binary) == [f"{binary}:2: not UTF-8 text"]
    assert check_file(tmp_path / "missing.toml") == [f"{tmp_path / 'missing.toml'}: no such file"]
    assert "is a folder" in check_file(tmp_path)[0]


# -- fuzzing ---------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "profile",
        "filesystem",
        "network",
        "env",
        "limits",
        "deny_read",
        "allow_write",
        "read_only",
        "allow",
        "add",
        "strip",
        "pass",
        "cpu_seconds",
        "memory_mb",
        "processes",
        "wall_seconds",
        "netwrk",
        "x",
    ]
)
STRINGS = st.one_of(
    st.sampled_from(
        [
            "registry.npmjs.org",
            "*.a.com",
            "*",
            "*:*",
            "[::1]:80",
            "~/.ssh",
            ".",
            "..",
            "/",
            "~",
            "strict",
            "open",
            "AWS_*",
            "bücher.de",
            "a..b",
            "localhost:0",
            "~x",
            "*.1.2",
            "[::1",
            "xn--",
            "-",
            "::ffff:1.2.3.4",
        ]
    ),
    st.text(max_size=20),
)
SCALARS = st.one_of(
    STRINGS,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
DOCS = st.dictionaries(KEYS, VALUES, max_size=6)


def to_toml(doc: dict) -> str:
    """A small TOML writer for the fuzzer: inline tables, JSON-compatible strings."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"

    lines = []
    for key, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {value(x)}" for k, x in v.items()]
        else:
            lines.insert(0, f"{json.dumps(key)} = {value(v)}")
    return "\n".join(lines) + "\n"


FUZZ = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])


def assert_clean(text: str) -> None:
    layer, found = parse_text(text, source=SRC, name="project", trusted=False)
    if found:
        assert layer is None
        for problem in found:
            assert problem.line >= 1 and problem.message
        return
    # A valid file must compile, trusted or not.
    for trusted in (False, True):
        policy = compile_layers([layer._replace(trusted=trusted)], workspace=Path("/w"), home="/h")
        policy.decide_net("example.com", 443)
        policy.decide_read("/h/.ssh")
        policy.to_dict()


@FUZZ
@given(DOCS)
def test_fuzz_generated_documents_give_a_clean_error_or_a_valid_policy(doc):
    assert_clean(to_toml(doc))


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_never_crashes(text):
    assert_clean(text)


@FUZZ
@given(st.integers(0, len(TEMPLATE)), st.text(max_size=12), st.integers(0, 12))
def test_fuzz_edits_of_the_template_never_crash(at, insert, cut):
    assert_clean(TEMPLATE[:at] + insert + TEMPLATE[at + cut :])


@settings(
    deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_fuzz_bytes_through_load_file_raise_only_policy_errors(tmp_path, data):
    target = tmp_path / "fuzz.toml"
    target.write_bytes(data)
    try:
        load_file(target, name="project", trusted=False)
    except KrateError as exc:
        assert str(exc).startswith(str(target))
