"""Changing a policy file: `krate policy allow`, `init --user` and `edit`.

Edits are textual. tomllib reads TOML but cannot write it, and a writer that
re-serialises the parsed document (tomli-w) would drop the user's comments, order
and formatting; tomlkit keeps them, but would be a new dependency for one list
append. So `append` finds the list in the text (the same kind of line scan as
load.Locator), inserts one string, and then proves the edit: the new text must
parse to exactly the old document plus that one entry, and pass the same
validation as `krate policy check`; anything else is refused and nothing is written.

Files are replaced atomically (a temporary file beside them, then rename), through
a symbolic link to its target, under a lock on their folder (concurrent changes
all land; `edit` refuses to overwrite a file changed while the editor was open).
Never prints and never reads os.environ: the CLI passes the editor's command in.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from krate.errors import KrateError, UsageError
from krate.paths import FILE_MODE
from krate.policy import hosts
from krate.policy.load import Locator, parse_text

USER_TEMPLATE = """\
# policy.toml: your krate policy, applied to every run (docs: docs/policy.md).
#
# It sits above the built-in profile and below each project's krate.toml, and it
# may widen the policy (it is yours). Check it with `krate policy check FILE`;
# `krate policy allow HOST` adds a host here, `krate policy edit` opens it.

# Start from a built-in profile: "strict" (no network), "default" (package
# registries) or "open" (any host).
# profile = "default"

[filesystem]
# Paths hidden from every workload.
# deny_read = ["~/work/secrets"]
# Extra places workloads may write (the workspace is always writable).
# allow_write = ["~/.cache/pip"]
# Paths that stay read-only even inside writable places.
# read_only = ["~/.gitconfig"]

[network]
# Hosts added to those of the profile (`krate policy allow HOST` appends here):
# add = ["npm.corp.example", "example.com:8443"]
# Or replace the profile's hosts (an empty list means no network at all):
# allow = ["registry.npmjs.org"]

[env]
# Variable name patterns removed from the workload's environment (added to the defaults).
# strip = ["MY_COMPANY_*"]
# Names kept even if they match a strip pattern.
# pass = ["NPM_CONFIG_REGISTRY"]

[limits]
# cpu_seconds = 600
# memory_mb = 4096
# processes = 512
# wall_seconds = 3600
"""


class Appended(NamedTuple):
    """What `allow_host` did: the entry as written, the key, and whether it was there."""

    entry: str
    key: str
    already: bool


# ---------------------------------------------------------------- hosts


def host_entry(text: str) -> str:
    """The policy entry for a HOST[:PORT] or a URL (as --allow-host takes it), validated.

    A URL keeps only its host and an explicit port: without a port the entry means
    the web ports 80 and 443, which covers http:// and https:// alike.
    """
    raw = text.strip()
    if "://" in raw:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"invalid host pattern: `{text}`: {exc}") from None
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        raw = f"{host}:{port}" if port else host
    try:
        hosts.parse_pattern(raw)
    except ValueError as exc:
        raise UsageError(f"invalid host pattern: {exc}") from None
    return raw


def allow_host(path: Path, text: str, *, template: str, mode: int | None = None) -> Appended:
    """Append a host to `[network] add` (or to `allow` when only that list exists).

    Idempotent: an entry naming the same hosts and ports already in either list is
    not added again. A missing file is created from `template` first.
    """
    entry = host_entry(text)
    wanted = hosts.parse_pattern(entry)

    def same(existing: str) -> bool:
        try:
            return hosts.parse_pattern(existing) == wanted
        except ValueError:
            return False

    return append(path, "network", ("add", "allow"), entry, same, template=template, mode=mode)


def allow_private(
    path: Path, text: str, *, template: str, mode: int | None = None
) -> list[Appended]:
    """`krate policy allow --private HOST[:PORT]`: the host's name into `[network]
    private_ok` and, unless the file's own `add`/`allow` already cover HOST[:PORT], the
    host into `add` too (a private_ok entry for a host the policy does not allow is an
    error), so one command fixes a private-address denial.

    The file is made to allow the host itself, even when the profile does: the opt-in
    then stays valid under any profile. Both lists change under one lock; each step is
    proven as `append` proves it. Idempotent per list.
    """
    entry = host_entry(text)
    wanted = hosts.parse_pattern(entry)
    name = hosts.split_host_port(entry)[0]  # the host as written, without its port
    try:
        private = hosts.parse_private(name)
    except ValueError as exc:
        raise UsageError(f"invalid host for --private: {exc}") from None

    def covered(existing: list[str]) -> bool:
        rules = []
        for e in existing:
            try:
                rules += hosts.parse_pattern(e)
            except ValueError:
                continue
        return all(hosts.covers(rules, w) for w in wanted)

    def same_private(existing: str) -> bool:
        try:
            return hosts.parse_private(existing) == private
        except ValueError:
            return False

    done = []
    with locked(path):
        doc = _valid_doc(path, read_text(path) if path.exists() else template)
        table = doc.get("network", {})
        listed = [e for k in ("add", "allow") for e in table.get(k, ()) if isinstance(e, str)]
        if covered(listed):
            key = "add" if "add" in table or "allow" not in table else "allow"
            done.append(Appended(entry, f"network.{key}", True))
        else:
            done.append(
                _append(path, "network", ("add", "allow"), entry, lambda _: False,
                        template=template, mode=mode)
            )  # fmt: skip
        done.append(
            _append(path, "network", ("private_ok",), name, same_private,
                    template=template, mode=mode)
        )  # fmt: skip
    return done


def append(
    path: Path,
    section: str,
    keys: tuple[str, ...],
    entry: str,
    same: Callable[[str], bool],
    *,
    template: str,
    mode: int | None = None,
) -> Appended:
    """Append `entry` to the first of `keys` in [section] that exists (else create keys[0])."""
    with locked(path):
        return _append(path, section, keys, entry, same, template=template, mode=mode)


def _append(path, section, keys, entry, same, *, template, mode) -> Appended:
    exists = path.exists()
    original = read_text(path) if exists else template
    doc = _valid_doc(path, original)
    table = doc.get(section, {})
    for key in keys:
        if any(same(e) for e in table.get(key, ()) if isinstance(e, str)):
            return Appended(entry, f"{section}.{key}", True)
    key = next((k for k in keys if k in table), keys[0])
    new_text = _appended(original, section, key, entry)
    expected = _with_entry(doc, section, key, entry)
    if new_text is None or _valid_doc(path, new_text, quiet=True) != expected:
        raise KrateError(
            f"cannot add `{entry}` to {path} without rewriting it (its `{section}` is written "
            f"in a form krate does not edit); add it by hand with `krate policy edit`"
        )
    write_text(path, new_text, mode=mode)
    return Appended(entry, f"{section}.{key}", False)


def _with_entry(doc: dict, section: str, key: str, entry: str) -> dict:
    out = dict(doc)
    table = dict(out.get(section, {}))
    table[key] = [*table.get(key, []), entry]
    out[section] = table
    return out


def _valid_doc(path: Path, text: str, *, quiet: bool = False) -> dict | None:
    """The parsed document, when `text` passes `krate policy check`; else raise (or None)."""
    import tomllib

    _, problems = parse_text(text, source=path, name="check", trusted=True)
    if problems:
        if quiet:
            return None
        first = problems[0]
        raise KrateError(
            f"{path}:{first.line}: {first.message}; fix it first (`krate policy edit`), "
            "nothing was changed"
        )
    return tomllib.loads(text.removeprefix("\ufeff"))


# ---------------------------------------------------------------- the text


_HEADER = re.compile(r"^[ \t]*\[[ \t]*([A-Za-z0-9_-]+)[ \t]*\][ \t]*(?:#.*)?$", re.M)


def _appended(text: str, section: str, key: str, entry: str) -> str | None:
    """`text` with `entry` added to the list `section.key`; None when it cannot tell how."""
    if text.startswith("\ufeff"):  # a byte-order mark stays, outside what is scanned
        rest = _appended(text[1:], section, key, entry)
        return None if rest is None else "\ufeff" + rest
    quoted = '"' + entry.replace("\\", "\\\\").replace('"', '\\"') + '"'
    entries = Locator(text).entries()
    found = [n for n, parts, header in entries if parts == (section, key) and not header]
    if found:
        return _into_list(text, found[0], quoted)
    header = next((m for m in _HEADER.finditer(text) if m.group(1) == section), None)
    if header is not None:
        return text[: header.end()] + f"\n{key} = [{quoted}]" + text[header.end() :]
    if any(parts[:1] == (section,) for _, parts, _ in entries):
        return None  # a dotted key or an inline table: leave it to the user
    sep = "" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
    return f"{text}{sep}[{section}]\n{key} = [{quoted}]\n"


def _into_list(text: str, line: int, quoted: str) -> str | None:
    """Insert `quoted` as the last element of the array whose key is on `line` (1-based)."""
    start = sum(len(s) for s in text.splitlines(keepends=True)[: line - 1])
    equals = text.index("=", start)
    i = equals + 1
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "[":
        return None
    depth, i = 0, i
    last_end = None  # just after the last element
    comma = False  # a comma follows the last element
    while i < len(text):
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            if i < 0:
                return None
            continue
        if c in "\"'":
            end = _string_end(text, i)
            if end is None:
                return None
            if depth == 1:
                last_end, comma = end, False
            i = end
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return _insert(text, i, last_end, comma, quoted)
            if depth == 1:
                last_end, comma = i + 1, False
        elif c == "," and depth == 1:
            comma = True
        elif depth == 1 and c not in " \t\r\n":
            return None  # a number, a table...: not a list of strings
        i += 1
    return None


def _string_end(text: str, i: int) -> int | None:
    """The index just after the TOML string starting at `i` (basic, literal or multi-line)."""
    quote = text[i]
    triple = text.startswith(quote * 3, i)
    delim = quote * 3 if triple else quote
    j = i + len(delim)
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text.startswith(delim, j):
            return j + len(delim)
        if not triple and text[j] == "\n":
            return None
        j += 1
    return None


def _insert(text: str, close: int, last_end: int | None, comma: bool, quoted: str) -> str:
    if last_end is None:  # an empty list
        return text[:close] + quoted + text[close:]
    line_start = text.rfind("\n", 0, close) + 1
    if text[line_start:close].strip() == "" and "\n" in text[last_end:close]:
        # `]` on a line of its own: one element per line, indented like the last one.
        last_line = text.rfind("\n", 0, last_end) + 1
        indent = re.match(r"[ \t]*", text[last_line:]).group(0)
        head = text if comma else text[:last_end] + "," + text[last_end:]
        shift = 0 if comma else 1
        at = line_start + shift
        return head[:at] + f"{indent}{quoted},\n" + head[at:]
    if comma:
        return text[:close].rstrip(" \t") + f" {quoted}" + text[close:]
    return text[:last_end] + f", {quoted}" + text[last_end:]


# ---------------------------------------------------------------- files


def read_text(path: Path) -> str:
    from krate.policy.load import read_bytes
    from krate.policy.model import PolicyError

    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text; fix it first, nothing was changed") from None


def write_text(path: Path, text: str, *, mode: int | None = None) -> Path:
    """Replace `path` (its target, if a link) atomically, with `mode` if given, else
    keeping the file's own (a new file: 0600)."""
    target = Path(os.path.realpath(path))
    try:
        kept = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        kept = FILE_MODE
        _private_dir(target.parent)
    mode = kept if mode is None else mode
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise KrateError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        os.unlink(tmp)
        raise KrateError(f"cannot write {path}: {exc.strerror or exc}") from None
    return target


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder of `path` (its target, if a link) while a
    change is read, checked and written: two `krate policy allow` at once both land.
    flock on the folder itself, so no lock file is left behind."""
    import fcntl

    folder = Path(os.path.realpath(path)).parent
    _private_dir(folder)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise KrateError(f"cannot open {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _private_dir(folder: Path) -> None:
    """Create a missing folder 0700 (never chmod an existing one: it may be a project's)."""
    if not folder.exists():
        from krate.paths import ensure_private_dir

        ensure_private_dir(folder)


def init_user(path: Path, *, force: bool) -> Path:
    """Write the commented user policy template at `path` (0600, folder 0700)."""
    if path.exists() and not force:
        raise KrateError(f"{path} already exists; edit it (`krate policy edit`) or pass --force")
    return write_text(path, USER_TEMPLATE, mode=FILE_MODE)


# ---------------------------------------------------------------- the editor


class Edited(NamedTuple):
    """How `edit` ended: `saved`, `unchanged`, `refused` (invalid) or `conflict` (the file
    changed while the editor was open); the last two keep the edit in `kept`."""

    outcome: str
    problems: tuple[str, ...] = ()
    kept: Path | None = None


def problems_in(path: Path, text: str) -> list[str]:
    """`krate policy check`'s lines for `text` as the content of `path`."""
    _, problems = parse_text(text, source=path, name="check", trusted=True)
    return [f"{path}:{p.line}: {p.message}" for p in problems]


def edit(
    path: Path,
    editor: list[str],
    *,
    template: str,
    again: Callable[[list[str]], bool] | None = None,
    mode: int | None = None,
) -> Edited:
    """Open a private copy of `path` in `editor`; save it back only when it is valid.

    On an invalid save `again(problems)` says whether to re-open the editor; without
    it (no terminal), or when it says no, nothing is saved and the copy is kept. An
    editor that exits non-zero abandons the edit.
    """
    import shutil
    import subprocess

    exists = path.exists()
    original = read_text(path) if exists else template
    folder = Path(tempfile.mkdtemp(prefix="krate-edit-"))  # 0700
    copy = folder / path.name
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(original)
    while True:
        try:
            code = subprocess.run([*editor, str(copy)], check=False).returncode
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise UsageError(
                f"cannot start the editor `{editor[0]}`: {exc.strerror or exc}; "
                "set VISUAL or EDITOR"
            ) from None
        if code != 0:  # e.g. vim's :cq, "abandon this edit"
            shutil.rmtree(folder, ignore_errors=True)
            raise KrateError(f"the editor exited with status {code}; nothing saved to {path}")
        try:
            text = copy.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems = [f"{path}: cannot read the edited copy: {exc}"]
        else:
            problems = problems_in(path, text)
        if not problems:
            break
        if again is None or not again(problems):
            return Edited("refused", tuple(problems), copy)
    with locked(path):
        now = read_text(path) if path.exists() else None
        if now != (original if exists else None):  # e.g. `krate policy allow` meanwhile
            return Edited("conflict", (), copy)
        if exists and text == original:
            shutil.rmtree(folder, ignore_errors=True)
            return Edited("unchanged")
        write_text(path, text, mode=mode)
    shutil.rmtree(folder, ignore_errors=True)
    return Edited("saved")
