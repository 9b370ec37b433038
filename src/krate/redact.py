"""Secrets out of command lines before they are stored, and the credential shapes krate knows.

A run record keeps the workload's argv, and people put tokens on command lines
(`curl -H "Authorization: Bearer ghp_..."`, `--password hunter2`,
`https://user:pass@host/`). Everything that reaches the store goes through
`redact_argv` first. The same shapes let `sandbox.env` strip environment
variables whose *value* is a credential whatever their name.

Pure functions: no I/O, no environment. Must never return or log a value it matched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

MASK = "***"

# Well-known credential shapes: (label, pattern). Each pattern matches the secret
# itself so that it can be cut out of a longer string (a header, a URL).
TOKEN_SHAPES: tuple[tuple[str, str], ...] = (
    ("github token", r"gh[pousr]_[A-Za-z0-9]{20,}"),
    ("github fine-grained token", r"github_pat_[A-Za-z0-9_]{20,}"),
    ("gitlab token", r"glpat-[A-Za-z0-9_\-]{20,}"),
    ("openai/anthropic-style key", r"sk-[A-Za-z0-9_\-]{20,}"),
    ("stripe key", r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("slack token", r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("aws access key id", r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    ("google api key", r"AIza[0-9A-Za-z_\-]{35}"),
    ("npm token", r"npm_[A-Za-z0-9]{36}"),
    ("pypi token", r"pypi-[A-Za-z0-9_\-]{50,}"),
    ("hugging face token", r"hf_[A-Za-z0-9]{30,}"),
)
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(f"(?:{p})" for _, p in TOKEN_SHAPES) + r")")


@functools.cache
def _labelled() -> list[tuple[str, re.Pattern[str]]]:
    """One pattern per shape, compiled only once a value matched one of them."""
    return [(label, re.compile(r"(?<![A-Za-z0-9])" + p)) for label, p in TOKEN_SHAPES]


_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# scheme://user:password@host: the password part (user alone is not a secret).
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?=@)")
# Names that say "the value is a secret": --password, --api-key, client_secret=, GITHUB_TOKEN=
_SECRET_NAME = re.compile(
    r"(?:^|[-_.])(?:pass|password|passwd|passphrase|pwd|secret|token|api[-_]?key|auth"
    r"|authorization|credentials?|private[-_]?key|access[-_]?key)(?:$|[-_.])",
    re.IGNORECASE,
)
_FLAG = re.compile(r"^(?P<flag>--?[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:=(?P<value>.*))?$", re.DOTALL)
_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.DOTALL)
_BEARER = re.compile(r"(?i)(?P<head>\b(?:bearer|basic|token)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{8,})")


def credential_kind(value: str) -> str | None:
    """Which credential shape `value` contains, or None (never returns the match)."""
    if _PRIVATE_KEY.search(value):
        return "private key block"
    if _TOKEN.search(value):
        for label, pattern in _labelled():
            if pattern.search(value):
                return label
    if _URL_USERINFO.search(value):
        return "password in a URL"
    return None


def secret_name(name: str) -> bool:
    """True when a flag or variable name says its value is a secret (`--token`, `DB_PASSWORD`)."""
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def redact_text(text: str) -> str:
    """Cut known credential shapes out of one string, keeping the rest readable."""
    if _PRIVATE_KEY.search(text):
        return MASK
    text = _TOKEN.sub(MASK, text)
    text = _URL_USERINFO.sub(lambda m: m.group("head") + MASK, text)
    return _BEARER.sub(lambda m: m.group("head") + MASK, text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with secrets masked: token shapes, URL passwords, values of secret-named flags.

    `--token=X` and `--token X` both hide X; `NAME_TOKEN=X` (as given to `env`)
    hides X. The program name is kept as given (after token-shape masking).
    """
    out: list[str] = []
    hide_next = False
    for index, arg in enumerate(argv):
        if hide_next:
            hide_next = False
            out.append(MASK)
            continue
        flag = _FLAG.match(arg) if index else None
        if flag and secret_name(flag.group("flag")):
            if flag.group("value") is None:
                hide_next = True
                out.append(arg)
            else:
                out.append(f"{flag.group('flag')}={MASK}")
            continue
        assign = _ASSIGN.match(arg)
        if assign and secret_name(assign.group("name")):
            out.append(f"{assign.group('name')}={MASK}")
            continue
        out.append(redact_text(arg))
    return out
