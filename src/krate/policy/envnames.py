"""Environment variable name patterns for `[env] strip` and `[env] pass`.

`*` matches any run of characters and `?` one character; comparison ignores case
so `github_token` is as secret as `GITHUB_TOKEN`. Patterns match names only:
values are never looked at, stored or compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_ALLOWED = re.compile(r"^[A-Za-z0-9_.*?-]+$")


def check_text(text: str) -> str | None:
    """Why an env name pattern is unusable, or None when it is fine."""
    if not text:
        return "empty variable name pattern"
    if not _ALLOWED.match(text):
        return f"`{text}` is not a variable name pattern (letters, digits, `_`, `*`, `?`)"
    return None


def is_literal(text: str) -> bool:
    return "*" not in text and "?" not in text


def compile_pattern(text: str) -> Callable[[str], object]:
    """A fast case-insensitive full-match test for one pattern (names come upper-cased).

    The common shapes (`NAME`, `AWS_*`, `*_TOKEN`, `*SECRET*`) are plain string tests:
    every `krate run` compiles the whole strip list, and a regex each costs start-up.
    """
    upper = text.upper()
    if "?" not in upper:
        inner = upper.strip("*")
        if "*" not in inner:
            lead, trail = upper.startswith("*"), upper.endswith("*") and len(upper) > 1
            if lead and trail:
                return lambda name: inner in name
            if lead:
                return lambda name: name.endswith(inner)
            if trail:
                return lambda name: name.startswith(inner)
            return lambda name: name == inner
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in upper)
    return re.compile(body + r"\Z", re.DOTALL).match


def compile_any(texts: Iterable[str]) -> Callable[[str], bool]:
    """One test for "does any of these patterns match" (names come upper-cased).

    decide_env asks it for every variable of every run before looking for the rule
    that matched: with the built-in list's forty patterns, a pattern-by-pattern loop
    would cost each run a few tenths of a millisecond.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    inner: list[str] = []
    other: list[Callable[[str], object]] = []
    for text in texts:
        upper = text.upper()
        core = upper.strip("*")
        if "?" in upper or "*" in core:
            other.append(compile_pattern(text))
        elif upper.startswith("*") and upper.endswith("*") and len(upper) > 1:
            inner.append(core)
        elif upper.startswith("*"):
            suffixes.append(core)
        elif upper.endswith("*"):
            prefixes.append(core)
        else:
            exact.add(upper)
    heads, tails = tuple(prefixes), tuple(suffixes)

    def match(name: str) -> bool:
        if name in exact or name.startswith(heads) or name.endswith(tails):
            return True
        for part in inner:
            if part in name:
                return True
        return any(test(name) for test in other)

    return match
