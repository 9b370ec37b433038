"""Environment variable name patterns for `[env] strip` and `[env] pass`.

`*` matches any run of characters and `?` one character; comparison ignores case
so `github_token` is as secret as `GITHUB_TOKEN`. Patterns match names only:
values are never looked at, stored or compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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
