"""Secrets out of command lines before they are stored, and the credential shapes krate knows.

A run record keeps the workload's argv, and people put tokens on command lines
(`curl -H "Authorization: Bearer ghp_..."`, `--password hunter2`,
`https://user:pass@host/`). Everything that reaches the store goes through
`redact_argv` first. The same shapes let `sandbox.env` strip environment
variables whose *value* is a credential whatever their name, and the secret
names are the policy's built-in strip list (policy.builtin.SECRET_ENV).

Pure functions: no I/O, no environment. Must never return or log a value it matched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

MASK = "***"

# Well-known credential shapes: (label, literal prefixes, pattern), the one list both
# the environment scrub (sandbox.env) and argv redaction use. Each pattern matches the
# secret itself so that it can be cut out of a longer string (a header, a URL), and must
# not follow a letter or digit. A pattern is compiled only when one of its prefixes
# occurs in the text: every run checks every variable, and compiling all of them would
# cost each `krate run` a few milliseconds.
TOKEN_SHAPES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("github token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"gh[pousr]_[A-Za-z0-9]{20,}"),
    ("github fine-grained token", ("github_pat_",), r"github_pat_[A-Za-z0-9_]{20,}"),
    ("gitlab token",
     ("glpat-", "glptt-", "gldt-", "glrt-", "glcbt-", "glsoat-", "glft-", "glimt-", "glagent-"),
     r"gl(?:pat|ptt|dt|rt|cbt|soat|ft|imt|agent)-[A-Za-z0-9_\-]{20,}"),
    ("openai/anthropic-style key", ("sk-",), r"sk-[A-Za-z0-9_\-]{20,}"),
    ("stripe key", ("k_live_", "k_test_"), r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("slack token", ("xox",), r"xox[abposre]-[A-Za-z0-9\-]{10,}"),
    ("slack app token", ("xapp-",), r"xapp-[0-9]-[A-Za-z0-9\-]{10,}"),
    ("slack webhook url", ("hooks.slack.com/",),
     r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,}"),
    ("discord webhook url", ("/api/webhooks/",),
     r"discord(?:app)?\.com/api/webhooks/[0-9]{5,}/[A-Za-z0-9_\-]{20,}"),
    ("aws access key id", ("AKIA", "ASIA"), r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    ("google api key", ("AIza",), r"AIza[0-9A-Za-z_\-]{35}"),
    ("google oauth access token", ("ya29.",), r"ya29\.[A-Za-z0-9_\-]{20,}"),
    ("google oauth refresh token", ("1//0",), r"1//0[A-Za-z0-9_\-]{30,}"),
    ("jwt", ("eyJ",), r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
    ("npm token", ("npm_",), r"npm_[A-Za-z0-9]{36}"),
    ("pypi token", ("pypi-",), r"pypi-[A-Za-z0-9_\-]{50,}"),
    ("docker personal access token", ("dckr_pat_",), r"dckr_pat_[A-Za-z0-9_\-]{20,}"),
    ("hugging face token", ("hf_",), r"hf_[A-Za-z0-9]{30,}"),
    ("vault token", ("hvs.", "hvb.", "hvr."), r"hv[sbr]\.[A-Za-z0-9_\-]{20,}"),
    ("sendgrid key", ("SG.",), r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),
    ("digitalocean token", ("dop_v1_", "doo_v1_", "dor_v1_"), r"do[opr]_v1_[a-f0-9]{64}"),
    ("shopify token", ("shpat_", "shpca_", "shppa_", "shpss_"),
     r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    ("atlassian api token", ("ATATT3",), r"ATATT3[A-Za-z0-9_\-=]{20,}"),
    ("databricks token", ("dapi",), r"dapi[a-f0-9]{32}"),
    ("grafana token", ("glsa_", "glc_"), r"gl(?:sa|c)_[A-Za-z0-9_\-=+/]{30,}"),
    ("terraform cloud token", (".atlasv1.",), r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-]{60,}"),
    ("pulumi token", ("pul-",), r"pul-[a-f0-9]{40}"),
    ("doppler token", ("dp.pt.", "dp.st.", "dp.sa.", "dp.ct."),
     r"dp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,}"),
    ("linear api key", ("lin_api_",), r"lin_api_[A-Za-z0-9]{40}"),
    ("postman api key", ("PMAK-",), r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}"),
    ("age secret key", ("AGE-SECRET-KEY-1",), r"AGE-SECRET-KEY-1[0-9A-Z]{58}"),
    ("azure storage key", ("AccountKey=",), r"AccountKey=[A-Za-z0-9+/]{80,}={0,2}"),
)  # fmt: skip


@functools.cache
def _shape(pattern: str) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9])" + pattern)


def _shapes_in(text: str):
    """(label, compiled pattern) of each shape whose prefix occurs in `text`."""
    for label, prefixes, pattern in TOKEN_SHAPES:
        for prefix in prefixes:
            if prefix in text:
                yield label, _shape(pattern)
                break


@functools.cache
def _regex(name: str) -> re.Pattern[str]:
    """The other patterns, compiled on first use (most values need none of them)."""
    return re.compile(_PATTERNS[name], re.DOTALL)


_PATTERNS = {
    "private key": r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----",
    # scheme://user:password@host: the password part (user alone is not a secret).
    "url": r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?=@)",
    "flag": r"^(?P<flag>--?[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:=(?P<value>.*))?$",
    "assign": r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$",
    "bearer": r"(?i)(?P<head>\b(?:bearer|basic|token)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{8,})",
}
_BEARER_WORDS = ("bearer", "basic", "token")


def _private_key(text: str) -> bool:
    return "PRIVATE KEY-----" in text and bool(_regex("private key").search(text))


def _url_password(text: str) -> bool:
    return "://" in text and "@" in text


def credential_kind(value: str) -> str | None:
    """Which credential shape `value` contains, or None (never returns the match)."""
    if _private_key(value):
        return "private key block"
    for label, pattern in _shapes_in(value):
        if pattern.search(value):
            return label
    if _url_password(value) and _regex("url").search(value):
        return "password in a URL"
    return None


@functools.cache
def _name_rules() -> tuple[tuple, tuple]:
    """The policy's built-in strip and keep lists, compiled once: one list for env and argv."""
    from krate.policy.builtin import KEEP_ENV, SECRET_ENV
    from krate.policy.envnames import compile_pattern

    return tuple(map(compile_pattern, SECRET_ENV)), tuple(map(compile_pattern, KEEP_ENV))


def secret_name(name: str) -> bool:
    """True when a flag or variable name says its value is a secret (`--token`, `DB_PASSWORD`).

    Variable names are matched against SECRET_ENV as the environment scrub matches them;
    a flag as `_NAME` with `-` and `.` read as `_` (`--api-key` as `_API_KEY`).
    """
    if name.startswith("-"):
        name = "_" + name.lstrip("-").replace("-", "_").replace(".", "_")
    upper = name.upper()
    strip, keep = _name_rules()
    return any(m(upper) for m in strip) and not any(m(upper) for m in keep)


def redact_text(text: str) -> str:
    """Cut known credential shapes out of one string, keeping the rest readable."""
    if _private_key(text):
        return MASK
    for _label, pattern in _shapes_in(text):
        text = pattern.sub(MASK, text)
    if _url_password(text):
        text = _regex("url").sub(lambda m: m.group("head") + MASK, text)
    lower = text.lower()
    if any(word in lower for word in _BEARER_WORDS):
        text = _regex("bearer").sub(lambda m: m.group("head") + MASK, text)
    return text


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
        flag = _regex("flag").match(arg) if index and arg.startswith("-") else None
        if flag and secret_name(flag.group("flag")):
            if flag.group("value") is None:
                hide_next = True
                out.append(arg)
            else:
                out.append(f"{flag.group('flag')}={MASK}")
            continue
        assign = _regex("assign").match(arg) if "=" in arg else None
        if assign and secret_name(assign.group("name")):
            out.append(f"{assign.group('name')}={MASK}")
            continue
        out.append(redact_text(arg))
    return out
