"""The SBPL evaluator the Seatbelt decision tests trust (tests/sbpl.py), on written profiles."""

from __future__ import annotations

import pytest

from .sbpl import SBPLError, decide, parse

BASE = "(version 1)\n(deny default)\n"


def expect(text, *cases):
    """Each case: "EXPECTED OPERATION SUBJECT [gap] [+EXTENSION]" (see sbpl.decide)."""
    prof = parse(text)
    for case in cases:
        want, op, subject, *rest = case.split()
        extensions = [r[1:] for r in rest if r.startswith("+")]
        got = decide(prof, op, subject, gap="gap" in rest, extensions=extensions)
        assert got == want, case


def test_default_decides_when_no_rule_matches():
    assert decide(BASE, "file-read-data", "/etc/hosts") == "deny"
    assert decide("(version 1)(allow default)", "file-read-data", "/etc/hosts") == "allow"
    assert decide(BASE, "mach-lookup", "com.apple.securityd") == "deny"


def test_last_matching_rule_wins_both_ways():
    deny_after = BASE + '(allow file-read*)\n(deny file-read* (subpath "/Users/a/.ssh"))\n'
    assert decide(deny_after, "file-read-data", "/Users/a/.ssh/id") == "deny"
    assert decide(deny_after, "file-read-data", "/Users/a/notes") == "allow"
    allow_after = BASE + '(deny file-read* (subpath "/Users/a/.ssh"))\n(allow file-read*)\n'
    assert decide(allow_after, "file-read-data", "/Users/a/.ssh/id") == "allow"
    # a later rule on a different operation does not override
    other_op = BASE + '(allow file-read*)\n(deny file-write* (subpath "/Users/a"))\n'
    assert decide(other_op, "file-read-data", "/Users/a/x") == "allow"


def test_wildcard_operations_are_prefixes_and_queries_report_mixed():
    text = BASE + '(allow file-read*)\n(deny file-read-data (subpath "/s"))\n'
    assert decide(text, "file-read-metadata", "/s/x") == "allow"
    assert decide(text, "file-read-data", "/s/x") == "deny"
    assert decide(text, "file-read*", "/s/x") == "mixed"
    assert decide(text, "file-read*", "/t") == "allow"
    # file-write* does not cover file-link or file-ioctl
    writes = BASE + "(allow file-write*)\n"
    assert decide(writes, "file-write-unlink", "/x") == "allow"
    assert decide(writes, "file-link", "/x") == "deny"
    assert decide(writes, "file-ioctl", "/x") == "deny"


TABLES = {
    "path filters": (
        BASE
        + '(allow file-read-data (literal "/a/lit"))\n'
        + '(allow file-write-data (subpath "/a/sub"))\n'
        + '(allow file-write-create (prefix "/a/pre"))\n'
        + '(allow file-write-unlink (regex #"^/a/re[0-9]+$"))\n',
        [
            "allow file-read-data /a/lit",
            "deny file-read-data /a/lit/x",
            "allow file-write-data /a/sub",
            "allow file-write-data /a/sub/deep/x",
            "deny file-write-data /a/subway",
            "allow file-write-create /a/prefix",
            "allow file-write-unlink /a/re12",
            "deny file-write-unlink /a/re12x",
            # the reported gap: subpath P read as not matching P itself
            "deny file-write-data /a/sub gap",
            "allow file-write-data /a/sub/x gap",
        ],
    ),
    "several filters are any; logic filters combine": (
        BASE
        + '(allow file-read-data (literal "/x") (literal "/y"))\n'
        + '(allow file-write-data (require-all (subpath "/w") (require-not (subpath "/w/ro"))))\n'
        + '(allow file-ioctl (require-any (literal "/dev/a") (literal "/dev/b")))\n'
        + '(allow file-write-data (require-all (regex #"^/dev/ttys[0-9]+$") (extension "pty")))\n',
        [
            "allow file-read-data /y",
            "allow file-write-data /w/f",
            "deny file-write-data /w/ro/f",
            "allow file-ioctl /dev/b",
            "deny file-write-data /dev/ttys001",
            "allow file-write-data /dev/ttys001 +pty",
        ],
    ),
    "non-path filters": (
        BASE
        + '(allow mach-lookup (global-name "com.apple.logd"))\n'
        + '(allow sysctl-read (sysctl-name "hw.ncpu") (sysctl-name-prefix "kern.proc.pid."))\n'
        + '(deny sysctl-read (sysctl-name-prefix "kern.proc.pid.1"))\n'
        + "(allow signal (target same-sandbox))\n"
        + "(allow system-socket (socket-domain AF_UNIX))\n"
        + '(allow network-bind (local ip "*:*"))\n'
        + '(allow network-inbound (local ip "localhost:*"))\n'
        + '(allow network-outbound (remote ip "localhost:3128"))\n'
        + '(allow network-outbound (remote unix-socket (subpath "/w")))\n',
        [
            "allow mach-lookup com.apple.logd",
            "deny mach-lookup com.apple.securityd",
            "allow sysctl-read hw.ncpu",
            "allow sysctl-read kern.proc.pid.42",
            "deny sysctl-read kern.proc.pid.123",
            "deny sysctl-read kern.procargs2",
            "allow signal same-sandbox",
            "deny signal other",
            "allow system-socket AF_UNIX",
            "deny system-socket AF_ROUTE",
            "allow network-bind 0.0.0.0:3000",
            "allow network-inbound 127.0.0.1:3000",
            "allow network-inbound [::1]:3000",
            "deny network-inbound 192.168.1.5:3000",
            "allow network-outbound 127.0.0.1:3128",
            "allow network-outbound ::1:3128",
            "deny network-outbound 127.0.0.1:9222",
            "deny network-outbound 93.184.216.34:3128",
            "allow network-outbound /w/s.sock",
            "deny network-outbound /var/run/docker.sock",
        ],
    ),
}


@pytest.mark.parametrize("name", TABLES)
def test_filters(name):
    text, cases = TABLES[name]
    expect(text, *cases)


def test_regexes_are_unanchored_unless_written_so():
    text = BASE + '(allow file-read-data (regex #"/secret"))\n'
    assert decide(text, "file-read-data", "/home/secret/x") == "allow"


def test_strings_and_comments():
    text = (
        BASE
        + ';; a comment (allow file-read*)\n(allow file-read-data (literal "/a \\"q\\" \\\\b"))\n'
    )
    assert decide(text, "file-read-data", '/a "q" \\b') == "allow"
    assert len(parse(text).rules) == 1


BAD = [
    "(deny default)",  # no version
    "(version 1)",  # no default
    "(version 1)(deny default)(deny default)",
    '(version 1)(deny default)(allow file-reed* (literal "/x"))',  # typo in an operation
    '(version 1)(deny default)(allow file-read* (subpaths "/x"))',  # unknown filter
    '(version 1)(deny default)(allow mach-lookup (literal "/x"))',  # filter of another kind
    '(version 1)(deny default)(allow file-read* (global-name "x"))',
    '(version 1)(deny default)(allow file-read* mach-lookup (literal "/x"))',
    '(version 1)(deny default)(allow file-read* (literal "x"))',  # relative
    '(version 1)(deny default)(allow file-read* (regex "^/x"))',  # not a #regex
    '(version 1)(deny default)(allow file-read* (regex #"(?i)^/x"))',  # not POSIX
    '(version 1)(deny default)(allow file-read* (regex #"^\\d"))',
    '(version 1)(deny default)(allow network-outbound (remote ip "127.0.0.1:80"))',
    '(version 1)(deny default)(allow network-outbound (remote tcp "localhost:80"))',
    '(version 1)(deny default)(allow file-read* (literal "/x") (with message "m"))',
    '(version 1)(deny default)(allow file-read* (subpath (param "X")))',
    '(version 1)(deny default)(import "system.sb")',
    '(version 1)(deny default)(allow file-read* (literal "/x")',
    '(version 1)(deny default)(allow file-read* (literal "/x\\n"))',
    "(version 1)(deny default)(allow signal (target others))",
]


@pytest.mark.parametrize("text", BAD)
def test_anything_outside_the_subset_fails_loudly(text):
    with pytest.raises(SBPLError):
        parse(text)


def test_queries_outside_the_subset_fail_loudly():
    with pytest.raises(SBPLError):
        decide(BASE, "file-read-dta", "/x")
    with pytest.raises(SBPLError):
        decide(BASE, "file-read-data", "relative")
    with pytest.raises(SBPLError):
        decide(BASE, "network-outbound", "localhost")
