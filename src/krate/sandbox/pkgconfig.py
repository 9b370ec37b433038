"""npm's and pip's own settings, without their credentials, for the workload.

A user's `~/.npmrc` names the registry, the proxy and the CA a corporate network
needs, next to `_authToken`; the built-in profile hides the whole file, so
`npm install` inside went to the public registry and failed. pip's files
(`pip.conf`) were readable as they were, credentials in index URLs included.

Each file is copied with only the keys listed here (an allowlist: a key krate does not
know is dropped, whatever it holds), and any `user:password@` taken out of URL values
(the host is kept). On Linux bubblewrap shows each copy read-only over the original
path (`--ro-bind-data`, from a descriptor: no file on disk), so the tools' own
layering is unchanged; on Seatbelt, which cannot mount, the copies are written to the
run's private folder (0600) and `NPM_CONFIG_USERCONFIG` and `PIP_CONFIG_FILE` name
them, and the user's own pip files are hidden. Nothing of these files is
recorded. configparser reads pip's format; npm's is `key=value` lines, parsed here
(no library on the run path reads it).
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from krate.paths import FILE_MODE
from krate.records import NamedTuple
from krate.sandbox.spec import PRIVATE_TMP, SOCKET_DIRS, SandboxSpec, is_within

# npm keys that may reach the workload (`@scope:registry` too); `//host/:...` never does.
NPM_KEYS = frozenset((
    "registry", "proxy", "https-proxy", "http-proxy", "noproxy", "no-proxy", "strict-ssl",
    "cafile", "ca", "ca[]", "maxsockets", "fetch-retries", "fetch-retry-factor",
    "fetch-retry-mintimeout", "fetch-retry-maxtimeout", "fetch-timeout", "prefer-offline",
    "prefer-online", "offline", "audit", "audit-level", "fund", "progress", "loglevel",
    "color", "save-exact", "save-prefix", "engine-strict", "legacy-peer-deps",
    "strict-peer-deps", "package-lock", "update-notifier", "ignore-scripts", "user-agent",
    "replace-registry-host",
))  # fmt: skip
# pip options that may reach the workload, in any section (`_` read as `-`).
PIP_KEYS = frozenset((
    "index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert", "proxy",
    "timeout", "default-timeout", "retries", "disable-pip-version-check", "prefer-binary",
    "only-binary", "no-binary", "constraint", "pre", "upgrade-strategy", "no-build-isolation",
    "use-pep517", "progress-bar", "require-virtualenv", "break-system-packages",
    "root-user-action", "no-cache-dir", "keyring-provider", "no-input", "exists-action",
))  # fmt: skip
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?[^/@\s]*@")


class Copy(NamedTuple):
    source: Path  # the user's file (read, never changed)
    text: str  # its sanitized text
    tool: str  # "npm" or "pip"


def strip_userinfo(value: str) -> str:
    """Each whitespace-separated URL in `value` without `user:password@` (the host kept)."""
    return " ".join(_USERINFO.sub(lambda m: m.group("scheme") or "", t) for t in value.split())


def npm_key_passes(key: str) -> bool:
    key = key.strip().lower()
    if key.startswith("//"):
        return False  # per-registry settings: _authToken, _auth, _password, username, certfile
    if key.startswith("@") and key.endswith(":registry"):
        return True
    return key in NPM_KEYS


def sanitize_npmrc(text: str) -> str:
    """The lines of an .npmrc whose key is allowed, URL credentials taken out."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        key, sep, value = stripped.partition("=")
        if sep and npm_key_passes(key):
            out.append(f"{key.strip()}={strip_userinfo(value.strip())}")
    return "".join(line + "\n" for line in out)


def sanitize_pipconf(text: str) -> str:
    """A pip.conf with only the allowed options, URL credentials taken out."""
    import configparser  # ~1 ms: only for a run that has a pip.conf to copy

    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return ""
    clean = configparser.RawConfigParser()
    for section in parser.sections():
        kept = {
            key: strip_userinfo(value)
            for key, value in parser.items(section)
            if key.replace("_", "-").lower() in PIP_KEYS
        }
        if kept:
            clean[section] = kept
    buffer = io.StringIO()
    clean.write(buffer)
    return buffer.getvalue()


def npm_sources(home: Path, environ: Mapping[str, str]) -> list[Path]:
    named = environ.get("NPM_CONFIG_USERCONFIG") or environ.get("npm_config_userconfig")
    return [Path(named) if named and os.path.isabs(named) else home / ".npmrc"]


def pip_sources(home: Path, environ: Mapping[str, str]) -> list[Path]:
    """pip's files, lowest priority first: site-wide, then the user's, then PIP_CONFIG_FILE."""
    dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    site = [Path(d) / "pip" / "pip.conf" for d in dirs.split(":") if os.path.isabs(d)]
    site.append(Path("/etc/pip.conf"))
    xdg = environ.get("XDG_CONFIG_HOME", "")
    config = Path(xdg) if os.path.isabs(xdg) else home / ".config"
    user = [home / ".pip" / "pip.conf", config / "pip" / "pip.conf"]
    if sys.platform == "darwin":
        user.append(home / "Library" / "Application Support" / "pip" / "pip.conf")
    named = environ.get("PIP_CONFIG_FILE", "")
    extra = [Path(named)] if os.path.isabs(named) and named != os.devnull else []
    return [*site, *user, *extra]


def sanitized(home: Path, environ: Mapping[str, str], skip: Iterable[Path] = ()) -> list[Copy]:
    """The sanitized text of every npm and pip file that exists, but those in or under a
    path of `skip` (the user's own `deny_read`)."""
    skip = list(skip)
    copies = []
    for tool, sources, clean in (
        ("npm", npm_sources(home, environ), sanitize_npmrc),
        ("pip", pip_sources(home, environ), sanitize_pipconf),
    ):
        for source in dict.fromkeys(sources):
            if any(is_within(source, s) for s in skip):
                continue
            try:
                text = source.read_text(errors="replace") if source.is_file() else None
            except OSError:
                text = None
            if text is not None:
                copies.append(Copy(source, clean(text), tool))
    return copies


def mounted(spec: SandboxSpec, copies: list[Copy]) -> SandboxSpec:
    """The spec with each copy given to bubblewrap as a read-only file over its original
    (`--ro-bind-data`: its text on a descriptor, never in a file krate would have to remove)."""
    # bubblewrap cannot mount onto a file inside a hidden folder (an empty read-only tmpfs)
    closed = [*spec.hidden, Path(PRIVATE_TMP), *map(Path, SOCKET_DIRS)]
    shown = [
        (c.source, c.text.encode())
        for c in copies
        if not any(is_within(c.source, h) and c.source != h for h in closed)
    ]
    # The copy takes the place of a hidden original (`~/.npmrc`): bubblewrap cannot mount
    # over its empty stand-in, whose file is gone once mounted.
    replaced = {dest for dest, _data in shown}
    return spec._replace(
        data_files=(*spec.data_files, *shown),
        hidden=tuple(h for h in spec.hidden if h not in replaced),
    )


def named(spec: SandboxSpec, copies: list[Copy], folder: Path) -> SandboxSpec:
    """The spec with the copies written to `folder` (0600) and named by the tools' variables
    (pip's merged into one file), the user's own pip files hidden: where nothing can mount."""
    if not copies:
        return spec
    env = dict(spec.env)
    npm = [c for c in copies if c.tool == "npm"]
    if npm:
        env["NPM_CONFIG_USERCONFIG"] = str(_write(folder / "npmrc", npm[-1].text))
    pip = [c for c in copies if c.tool == "pip"]
    hidden: list[Path] = []
    if pip:
        merged = sanitize_pipconf("".join(c.text for c in pip))
        env["PIP_CONFIG_FILE"] = str(_write(folder / "pip.conf", merged))
        hidden = [c.source for c in pip if not str(c.source).startswith(("/etc/", "/Library/"))]
    return spec._replace(
        env=env,
        writable=(*spec.writable, folder),
        declared_writable=(*(spec.declared_writable or spec.writable), folder),
        hidden=(*spec.hidden, *hidden),
        declared_hidden=(*(spec.declared_hidden or spec.hidden), *hidden),
    )


def _write(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path
