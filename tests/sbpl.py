"""A test-only evaluator for the subset of SBPL (Seatbelt's profile language) krate emits.

No Mac runs the tests, and `sandbox-exec` exists only there, so the profile's
decisions are checked here instead: parse the text, then answer a query such as
`decide(text, "file-write*", "/private/var/folders/x/T/f")` the way Seatbelt does:
the last rule whose operation and filter match decides; no rule, the default.

It fails loudly (SBPLError) on anything it does not understand: an unknown
operation or filter, a filter on an operation it cannot apply to, a regex with
syntax Seatbelt's POSIX-style engine does not have. So the profile cannot grow a
construct these tests would silently ignore. No library parses SBPL; this is small.

Operation names: `file-read*` is a prefix wildcard over the concrete operations
(`file-read-data`, `file-read-metadata`, `file-read-xattr`). A query with a
wildcard answers "allow" or "deny" only when every concrete member agrees, else
"mixed".

`gap=True` reads `(subpath P)` as not matching P itself (Codex reports that a
subpath rule alone leaves the first-time creation of P open); a decision that
must hold either way is asked both ways.

What it does not model: Seatbelt's fallback from an operation without any rule
to a broader one (here such an operation gets the default), symlink resolution
(query the resolved path, as the kernel checks it), firmlinks and case folding
(query each spelling: the evaluator compares bytes, as Seatbelt does). So the
profile names the operations whose decision matters (`file-link`) explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPERATIONS", "Profile", "SBPLError", "decide", "parse"]


class SBPLError(ValueError):
    """A profile or a query outside the subset this evaluator knows."""


# Concrete operations, by family. A rule may name one of these or a `prefix*` wildcard.
OPERATIONS = frozenset(
    {
        "file-read-data", "file-read-metadata", "file-read-xattr",
        "file-write-create", "file-write-data", "file-write-unlink", "file-write-mode",
        "file-write-owner", "file-write-flags", "file-write-times", "file-write-xattr",
        "file-write-acl", "file-write-setugid",
        "file-ioctl", "file-link", "file-clone", "file-test-existence", "file-map-executable",
        "file-issue-extension", "file-mknod", "file-revoke", "file-chroot", "file-lock",
        "file-mount", "file-unmount", "file-search",
        "process-exec", "process-fork",
        "process-info-pidinfo", "process-info-listpids", "process-info-setcontrol",
        "process-info-rusage", "process-info-codesignature", "process-info-dirtycontrol",
        "process-info-pidfdinfo", "process-info-pidfileportinfo",
        "signal", "sysctl-read", "sysctl-write", "mach-lookup", "mach-register",
        "ipc-posix-sem", "ipc-posix-shm-read-data", "ipc-posix-shm-read-metadata",
        "ipc-posix-shm-write-create", "ipc-posix-shm-write-data", "ipc-posix-shm-write-unlink",
        "pseudo-tty", "user-preference-read", "user-preference-write",
        "network-bind", "network-inbound", "network-outbound", "system-socket",
        "iokit-open", "mach-priv-task-port", "appleevent-send", "lsopen",
    }
)  # fmt: skip

# What a query's subject is, by operation family; the filters each family accepts.
_PATH_OPS = "file-"
_FILTERS_FOR = {
    "path": {"literal", "subpath", "prefix", "regex", "extension"},
    "mach": {"global-name", "local-name"},
    "sysctl": {"sysctl-name", "sysctl-name-prefix", "sysctl-name-regex"},
    "network": {"local", "remote"},
    "target": {"target"},
    "socket": {"socket-domain"},
    "none": set(),
}
_LOGIC = {"require-any", "require-all", "require-not"}


def _family(op: str) -> str:
    if op.startswith(_PATH_OPS):
        return "path"
    if op.startswith("mach-lookup") or op == "mach-register":
        return "mach"
    if op.startswith("sysctl"):
        return "sysctl"
    if op.startswith("network"):
        return "network"
    if op == "signal" or op.startswith("process-info"):
        return "target"
    if op == "system-socket":
        return "socket"
    return "none"


def expand(op: str) -> list[str]:
    """The concrete operations `op` names: itself, or every one its wildcard prefix covers."""
    if op.endswith("*"):
        found = sorted(o for o in OPERATIONS if o.startswith(op[:-1]))
    else:
        found = [op] if op in OPERATIONS else []
    if not found:
        raise SBPLError(f"unknown operation {op!r}")
    return found


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Sym:
    name: str


@dataclass(frozen=True)
class Str:
    text: str
    regex: bool = False  # written #"..."


def _tokens(text: str) -> Iterable[Any]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == ";":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "()":
            yield c
            i += 1
        elif c == "#" and text.startswith('#"', i):
            end = text.find('"', i + 2)
            if end < 0:
                raise SBPLError("unterminated regex literal")
            yield Str(text[i + 2 : end], regex=True)
            i = end + 1
        elif c == '"':
            out, i = [], i + 1
            while True:
                if i >= n:
                    raise SBPLError("unterminated string")
                if text[i] == "\\":
                    if i + 1 >= n or text[i + 1] not in '\\"':
                        raise SBPLError(f"unknown escape in string near {text[i : i + 4]!r}")
                    out.append(text[i + 1])
                    i += 2
                elif text[i] == '"':
                    i += 1
                    break
                else:
                    out.append(text[i])
                    i += 1
            yield Str("".join(out))
        else:
            start = i
            while i < n and text[i] not in ' \t\r\n();"':
                i += 1
            yield Sym(text[start:i])


def read(text: str) -> list[Any]:
    """The top-level s-expressions of `text` (lists, Sym, Str)."""
    stack: list[list[Any]] = [[]]
    for tok in _tokens(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise SBPLError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise SBPLError("unbalanced '('")
    return stack[0]


# ---------------------------------------------------------------- filters

# POSIX extended regexes as Seatbelt reads them: no Perl escapes, groups or flags.
_BAD_REGEX = re.compile(r"\(\?|\\[A-Za-z0-9]")


def _regex(text: str) -> re.Pattern[str]:
    if _BAD_REGEX.search(text):
        raise SBPLError(f"regex outside POSIX ERE: {text!r}")
    try:
        return re.compile(text)
    except re.error as exc:
        raise SBPLError(f"bad regex {text!r}: {exc}") from exc


@dataclass(frozen=True)
class Query:
    op: str
    path: str | None = None
    name: str | None = None  # mach service or sysctl
    local: tuple[str, int] | None = None  # (address, port)
    remote: tuple[str, int] | None = None
    unix: str | None = None  # a Unix socket's path
    target: str | None = None  # "same-sandbox" or "other"
    domain: str | None = None
    extensions: frozenset[str] = field(default_factory=frozenset)


def _one_str(args: list[Any], what: str, *, regex: bool = False) -> str:
    if len(args) != 1 or not isinstance(args[0], Str) or args[0].regex != regex:
        raise SBPLError(f"({what} ...) takes one {'#regex' if regex else 'string'}")
    return args[0].text


def _ip_match(pattern: str, address: tuple[str, int] | None) -> bool:
    host, _, port = pattern.rpartition(":")
    if host not in ("*", "localhost") or not (port == "*" or port.isdigit()):
        raise SBPLError(f"ip filter must be '*' or 'localhost' with a port or '*': {pattern!r}")
    if address is None:
        return False
    addr, number = address
    if port != "*" and int(port) != number:
        return False
    if host == "*":
        return True
    return addr == "localhost" or ipaddress.ip_address(addr.strip("[]")).is_loopback


class Filter:
    """A compiled filter: `matches(query, gap)`."""

    def __init__(self, form: Any, family: str) -> None:
        if not isinstance(form, list) or not form or not isinstance(form[0], Sym):
            raise SBPLError(f"not a filter: {form!r}")
        self.kind = kind = form[0].name
        args = form[1:]
        if kind in _LOGIC:
            self.parts = [Filter(a, family) for a in args]
            if kind == "require-not" and len(self.parts) != 1:
                raise SBPLError("(require-not F) takes one filter")
            if not self.parts:
                raise SBPLError(f"({kind}) without filters")
            return
        if kind not in _FILTERS_FOR[family]:
            raise SBPLError(f"filter ({kind} ...) does not apply to {family} operations")
        if kind == "regex" or kind == "sysctl-name-regex":
            if not args or not all(isinstance(a, Str) and a.regex for a in args):
                raise SBPLError(f"({kind} ...) takes #regex literals")
            self.regexes = [_regex(a.text) for a in args]
        elif kind in ("local", "remote"):
            if len(args) != 2 or not isinstance(args[0], Sym):
                raise SBPLError(f"({kind} ip|unix-socket ...) expected: {form!r}")
            self.proto = args[0].name
            if self.proto == "ip":
                self.value = _one_str(args[1:], f"{kind} ip")
                _ip_match(self.value, None)  # validates
            elif self.proto == "unix-socket":
                self.parts = [Filter(args[1], "path")]
            else:
                raise SBPLError(f"unknown network filter ({kind} {self.proto} ...)")
        elif kind in ("target", "socket-domain"):
            if len(args) != 1 or not isinstance(args[0], Sym):
                raise SBPLError(f"({kind} NAME) expected")
            self.value = args[0].name
            if kind == "target" and self.value != "same-sandbox":
                raise SBPLError(f"unknown target {self.value!r}")
            if kind == "socket-domain" and not self.value.startswith("AF_"):
                raise SBPLError(f"unknown socket domain {self.value!r}")
        else:
            self.value = _one_str(args, kind)
            if kind in ("literal", "subpath", "prefix") and not self.value.startswith("/"):
                raise SBPLError(f"({kind} ...) needs an absolute path: {self.value!r}")
            if kind == "subpath" and self.value != "/" and self.value.endswith("/"):
                raise SBPLError(f"subpath with a trailing slash: {self.value!r}")

    def matches(self, q: Query, gap: bool = False, path: str | None = None) -> bool:
        kind = self.kind
        path = q.path if path is None else path
        if kind == "require-any":
            return any(p.matches(q, gap, path) for p in self.parts)
        if kind == "require-all":
            return all(p.matches(q, gap, path) for p in self.parts)
        if kind == "require-not":
            return not self.parts[0].matches(q, gap, path)
        if kind == "literal":
            return path == self.value
        if kind == "subpath":
            if path is None:
                return False
            if self.value == "/":
                return path.startswith("/")
            return (path == self.value and not gap) or path.startswith(self.value + "/")
        if kind == "prefix":
            return path is not None and path.startswith(self.value)
        if kind == "regex":
            return path is not None and any(r.search(path) for r in self.regexes)
        if kind == "extension":
            return self.value in q.extensions
        if kind in ("global-name", "local-name"):
            return kind == "global-name" and q.name == self.value
        if kind == "sysctl-name":
            return q.name == self.value
        if kind == "sysctl-name-prefix":
            return q.name is not None and q.name.startswith(self.value)
        if kind == "sysctl-name-regex":
            return q.name is not None and any(r.search(q.name) for r in self.regexes)
        if kind in ("local", "remote"):
            if self.proto == "ip":
                return _ip_match(self.value, q.local if kind == "local" else q.remote)
            return q.unix is not None and self.parts[0].matches(q, gap, q.unix)
        if kind == "target":
            return q.target == "same-sandbox"
        if kind == "socket-domain":
            return q.domain == self.value
        raise SBPLError(f"cannot evaluate ({kind} ...)")  # pragma: no cover


# ---------------------------------------------------------------- profile


@dataclass
class Rule:
    action: str  # "allow" or "deny"
    ops: frozenset[str]  # concrete operations
    filters: list[Filter]  # any may match; none: every query of the operations
    line: int

    def matches(self, q: Query, gap: bool) -> bool:
        if q.op not in self.ops:
            return False
        return not self.filters or any(f.matches(q, gap) for f in self.filters)


@dataclass
class Profile:
    default: str
    rules: list[Rule]

    def decide(self, q: Query, gap: bool = False) -> str:
        decision = self.default
        for rule in self.rules:
            if rule.matches(q, gap):
                decision = rule.action
        return decision


def parse(text: str) -> Profile:
    forms = read(text)
    if not forms or forms[0] != [Sym("version"), Sym("1")]:
        raise SBPLError("a profile starts with (version 1)")
    default = None
    rules: list[Rule] = []
    for index, form in enumerate(forms[1:], start=1):
        if not isinstance(form, list) or not form or not isinstance(form[0], Sym):
            raise SBPLError(f"not a rule: {form!r}")
        action = form[0].name
        if action not in ("allow", "deny"):
            raise SBPLError(f"unknown form ({action} ...)")
        ops = [a for a in form[1:] if isinstance(a, Sym)]
        filters = [a for a in form[1:] if isinstance(a, list)]
        if len(ops) + len(filters) != len(form) - 1 or not ops:
            raise SBPLError(f"({action} ...) needs operation names, then filters: {form!r}")
        if form[1 : 1 + len(ops)] != ops:
            raise SBPLError(f"operations must come before filters: {form!r}")
        if [o.name for o in ops] == ["default"]:
            if filters or default is not None:
                raise SBPLError("one (allow|deny default) without filters")
            default = action
            continue
        concrete: set[str] = set()
        families = set()
        for op in ops:
            for c in expand(op.name):
                concrete.add(c)
                families.add(_family(c))
        if filters and len(families) != 1:
            raise SBPLError(f"filters on operations of different kinds: {form!r}")
        family = families.pop() if filters else "none"
        rules.append(Rule(action, frozenset(concrete), [Filter(f, family) for f in filters], index))
    if default is None:
        raise SBPLError("no (deny default) or (allow default)")
    return Profile(default, rules)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SBPLError(f"address must be HOST:PORT: {text!r}")
    return host, int(port)


def decide(
    profile: Profile | str,
    op: str,
    subject: str | None = None,
    *,
    gap: bool = False,
    extensions: Iterable[str] = (),
) -> str:
    """ "allow", "deny" or (a wildcard whose members differ) "mixed" for `op` on `subject`.

    subject, by operation: a path (file-*); a service (mach-lookup); a sysctl name;
    "HOST:PORT" or a Unix socket's path (network-*: the local address for bind and
    inbound, the remote one for outbound); "same-sandbox"/"other" (signal,
    process-info*); a domain such as "AF_UNIX" (system-socket).
    """
    prof = parse(profile) if isinstance(profile, str) else profile
    answers = set()
    for concrete in expand(op):
        family = _family(concrete)
        q: dict[str, Any] = {"op": concrete, "extensions": frozenset(extensions)}
        if family == "path":
            if not subject or not subject.startswith("/"):
                raise SBPLError(f"{op} needs an absolute path")
            q["path"] = subject
        elif family in ("mach", "sysctl"):
            q["name"] = subject
        elif family == "network":
            if subject and subject.startswith("/"):
                q["unix"] = subject
            elif subject:
                side = "remote" if concrete == "network-outbound" else "local"
                q[side] = _address(subject)
        elif family == "target":
            q["target"] = subject
        elif family == "socket":
            q["domain"] = subject
        elif subject is not None:
            raise SBPLError(f"{op} takes no subject")
        answers.add(prof.decide(Query(**q), gap))
    return answers.pop() if len(answers) == 1 else "mixed"
