"""Reading a policy file: TOML parsing and validation with `FILE:LINE: message` errors.

tomllib reports the line of a syntax error; for unknown keys, wrong types and bad
values this module finds the line itself by scanning the text (tomllib keeps no
positions), and suggests the closest known key. Loading never raises anything
but PolicyError, whatever the file holds (the loader is fuzzed in the tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from krate import sha
from krate.policy import envnames, hosts, paths
from krate.policy.builtin import PROFILES
from krate.policy.model import LIMIT_NAMES, Item, Layer, PolicyError
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

PROJECT_FILE = "krate.toml"
MAX_FILE_BYTES = 1 << 20
MAX_LIMIT = 2**40
# Time limits above this overflow the kernel's timers (setitimer takes ~9.2e9 s at most).
MAX_SECONDS = 10 * 365 * 24 * 3600
LIMIT_MAX = {"cpu_seconds": MAX_SECONDS, "wall_seconds": MAX_SECONDS}

SCHEMA: dict[str, tuple[str, ...]] = {
    "filesystem": ("deny_read", "allow_write", "read_only"),
    "network": ("allow", "add", "private_ok"),
    "env": ("strip", "pass"),
    "limits": LIMIT_NAMES,
}
TOP_KEYS = ("profile", *SCHEMA)
ALL_DOTTED = ("profile", *(f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys))


class Problem(NamedTuple):
    line: int
    message: str


class PolicyFile(NamedTuple):
    """A policy file as read: its bytes' digest and the validated layer."""

    path: Path
    sha256: str
    layer: Layer


def digest(data: bytes) -> str:
    return sha.hexdigest(data)


def read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PolicyError(f"{path}: is a folder, not a policy file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(f"{path}:1: larger than 1 MiB; a policy file is a short list of rules")
    return data


def load_file(
    path: Path,
    *,
    name: str,
    trusted: bool | None = None,
    trusted_digests: dict[str, str] | None = None,
) -> PolicyFile:
    """Read, hash and validate one file; raise PolicyError naming the first problem.

    Trust is decided on the very bytes that were parsed: pass `trusted`, or the
    `trusted_digests` map to compare against the file's SHA-256.
    """
    data = read_bytes(path)
    sha = digest(data)
    if trusted is None:
        trusted = (trusted_digests or {}).get(str(path)) == sha
    layer, problems = parse_bytes(data, source=path, name=name, trusted=trusted, sha256=sha)
    if problems:
        first = problems[0]
        more = (
            f" (and {len(problems) - 1} more; run `krate policy check {path}`)"
            if len(problems) > 1
            else ""
        )
        raise PolicyError(f"{path}:{first.line}: {first.message}{more}")
    assert layer is not None
    return PolicyFile(path, sha, layer)


def check_file(path: Path) -> list[str]:
    """Every problem in a file as `FILE:LINE: message` lines; empty when it is valid."""
    try:
        data = read_bytes(path)
    except PolicyError as exc:
        return [str(exc)]
    _, problems = parse_bytes(data, source=path, name="check", trusted=True, sha256=digest(data))
    return [f"{path}:{p.line}: {p.message}" for p in problems]


def parse_bytes(
    data: bytes, *, source: Path, name: str, trusted: bool, sha256: str | None = None
) -> tuple[Layer | None, list[Problem]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [Problem(line, "not UTF-8 text")]
    return parse_text(text, source=source, name=name, trusted=trusted, sha256=sha256)


# Patterns, compiled (and cached by re) on first use: only a run with a policy file, or
# a broken one, uses them, and compiling them all costs every run ~0.5 ms of start-up.
_SYNTAX_AT = r"\s*\(at line (\d+), column \d+\)\s*$"


def parse_text(
    text: str, *, source: Path, name: str, trusted: bool, sha256: str | None = None
) -> tuple[Layer | None, list[Problem]]:
    """Validate `text`; return the layer (None on any problem) and the problems found."""
    if text.startswith("\ufeff"):
        text = text[1:]
    import tomllib  # only when a policy file exists (start-up of every run)

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(_SYNTAX_AT, message)
        if match:
            line = int(match.group(1))
            message = message[: match.start()]
        else:
            line = max(1, len(text.splitlines()))
            message = re.sub(r"\s*\(at end of document\)\s*$", " at the end of the file", message)
        return None, [Problem(line, f"TOML syntax error: {message}")]
    except (RecursionError, ValueError) as exc:  # pathological nesting
        return None, [Problem(1, f"TOML syntax error: {exc}")]
    checker = _Checker(text)
    layer = checker.layer(doc, source=source, name=name, trusted=trusted, sha256=sha256)
    problems = sorted(checker.problems, key=lambda p: p.line)
    return (None if problems else layer), problems


def suggest(key: str, candidates: tuple[str, ...]) -> str:
    import difflib  # only for an error message

    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        # A key placed in the wrong table: `allow_write` at the top means filesystem.allow_write.
        tail = [c for c in ALL_DOTTED if c.rsplit(".", 1)[-1] == key]
        close = tail[:1]
    return f" (did you mean `{close[0]}`?)" if close else ""


# How a TOML value's type is named in a problem (bool first: it is also an int).
_TYPE_NAMES = (
    (bool, "a boolean"),
    (int, "a number"),
    (float, "a decimal number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a table"),
)


def _type_name(value: Any) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "a date or time")


class _Checker:
    """Walks the parsed document, collecting problems with their lines."""

    def __init__(self, text: str) -> None:
        self.locator = Locator(text)
        self.problems: list[Problem] = []

    def problem(self, key: tuple[str, ...], message: str, value: str | None = None) -> None:
        self.problems.append(Problem(self.locator.line(key, value), message))

    def layer(
        self, doc: dict, *, source: Path, name: str, trusted: bool, sha256: str | None
    ) -> Layer:
        fields: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in TOP_KEYS:
                self.problem((key,), f"unknown key `{key}`{suggest(key, TOP_KEYS)}")
            elif key == "profile":
                if not isinstance(value, str):
                    self.problem((key,), f"`profile` must be a string, not {_type_name(value)}")
                elif value not in PROFILES:
                    names = ", ".join(PROFILES)
                    hint = suggest(value, tuple(PROFILES))
                    self.problem((key,), f"unknown profile `{value}`{hint}; choose one of {names}")
                else:
                    fields["profile"] = Item(value, self.locator.line((key,)))
            elif not isinstance(value, dict):
                self.problem((key,), f"`{key}` must be a table ([{key}]), not {_type_name(value)}")
            else:
                self.section(key, value, fields)
        base_dir = source.parent if source is not None else Path("/")
        return Layer(
            name=name, trusted=trusted, base_dir=base_dir, source=source, sha256=sha256, **fields
        )

    def section(self, section: str, table: dict, fields: dict[str, Any]) -> None:
        known = SCHEMA[section]
        for key, value in table.items():
            where = (section, key)
            dotted = f"{section}.{key}"
            if key not in known:
                self.problem(where, f"unknown key `{dotted}`{suggest(key, known)}")
                continue
            if section == "limits":
                if isinstance(value, bool) or not isinstance(value, int):
                    self.problem(
                        where, f"`{dotted}` must be a whole number, not {_type_name(value)}"
                    )
                elif not 1 <= value <= LIMIT_MAX.get(key, MAX_LIMIT):
                    top = LIMIT_MAX.get(key, MAX_LIMIT)
                    years = " (10 years)" if top == MAX_SECONDS else ""
                    self.problem(where, f"`{dotted}` must be between 1 and {top}{years}")
                else:
                    fields.setdefault("limits", ())
                    fields["limits"] += ((key, value, self.locator.line(where)),)
                continue
            items = self.strings(where, dotted, value)
            if items is None:
                continue
            problem_of = _ITEM_PROBLEMS.get(dotted) or _ITEM_PROBLEMS[section]
            good = tuple(item for item in items if self.check(dotted, item, problem_of))
            field = {
                "filesystem.deny_read": "deny_read",
                "filesystem.allow_write": "allow_write",
                "filesystem.read_only": "read_only",
                "network.allow": "net_allow",
                "network.add": "net_add",
                "network.private_ok": "private_ok",
                "env.strip": "env_strip",
                "env.pass": "env_pass",
            }[dotted]
            fields[field] = good

    def strings(self, where: tuple[str, ...], dotted: str, value: Any) -> list[Item] | None:
        if not isinstance(value, list):
            self.problem(where, f"`{dotted}` must be a list of strings, not {_type_name(value)}")
            return None
        items = []
        for entry in value:
            if not isinstance(entry, str):
                self.problem(where, f"`{dotted}` entries must be strings, not {_type_name(entry)}")
                return None
            items.append(Item(entry, self.locator.line(where, entry)))
        return items

    def check(self, dotted: str, item: Item, problem_of: Callable[[str], str | None]) -> bool:
        """Whether the entry is valid; if not, the problem is recorded at its line."""
        why = problem_of(item.text)
        if why:
            self.problems.append(Problem(item.line or 1, f"`{dotted}`: {why}"))
        return why is None


def _path_problem(text: str) -> str | None:
    why = paths.check_text(text)
    return f"invalid path: {why}" if why else None


def _host_problem(text: str) -> str | None:
    try:
        hosts.parse_pattern(text)
    except ValueError as exc:
        return f"invalid host pattern: {exc}"
    return None


def _private_problem(text: str) -> str | None:
    try:
        hosts.parse_private(text)
    except ValueError as exc:
        return f"invalid host name: {exc}"
    return None


# What is wrong with one entry of each section's lists, or None.
_ITEM_PROBLEMS = {
    "filesystem": _path_problem,
    "network": _host_problem,
    "network.private_ok": _private_problem,
    "env": envnames.check_text,
}


_HEADER = r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$"  # compiled on first use (above)
_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY_PART = rf"(?:{_BARE}|{_QUOTED})"
_KEY = rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*="
_PART = rf"{_BARE}|{_QUOTED}"


def _parts(dotted: str) -> tuple[str, ...]:
    out = []
    for part in re.findall(_PART, dotted):
        if part[:1] in "\"'":
            part = part[1:-1]
        out.append(part)
    return tuple(out)


class Locator:
    """Finds the line of a key (and of a string value under it) in TOML text, best effort."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._index: list[tuple[int, tuple[str, ...], bool]] = []  # (line, key path, is_header)
        table: tuple[str, ...] = ()
        header_of, key_of = re.compile(_HEADER).match, re.compile(_KEY).match
        for number, line in enumerate(self.lines, 1):
            header = header_of(line)
            if header:
                table = _parts(header.group(1))
                self._index.append((number, table, True))
                continue
            key = key_of(line)
            if key:
                self._index.append((number, table + _parts(key.group(1)), False))

    def entries(self) -> list[tuple[int, tuple[str, ...], bool]]:
        """(line, key path, whether a [table] header) of every key and header, in order."""
        return list(self._index)

    def line(self, key: tuple[str, ...], value: str | None = None) -> int:
        found = None
        for number, path, _is_header in self._index:
            if path == key:
                found = number
                break
        if found is None:
            # Inline tables: `network = { allow = [...] }` names only the outer key.
            for number, path, _is_header in self._index:
                if path and key[: len(path)] == path:
                    found = number
        if found is None:
            return 1
        if value is not None:
            starts = {n for n, _, _ in self._index}
            for number in range(found, len(self.lines) + 1):
                if number != found and number in starts:
                    break
                text = self.lines[number - 1]
                if f'"{value}"' in text or f"'{value}'" in text:
                    return number
        return found
